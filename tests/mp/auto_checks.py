"""Run under horovodrun: training.auto.decide on a real link (Gloo) with every rank's compute made to
differ (rank r's batches are r + 1 times as many), so a rank deciding alone would decide otherwise; every
rank prints the record it got as one JSON line ("auto-record <rank> <json>") for the test to compare."""
import json
import pathlib
import sys

import horovod.torch as hvd
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
from models import DigitsNet  # noqa: E402
from training import auto  # noqa: E402
from training.config import load_configs  # noqa: E402

hvd.init()
torch.set_num_threads(1)
torch.manual_seed(0)
root = pathlib.Path(__file__).resolve().parents[2] / "configs"
cfg = load_configs([root / "__init__.py"], root=root)
model = DigitsNet()
x, y = torch.randn(32 * (hvd.rank() + 1), 1, 8, 8), torch.randint(10, (32 * (hvd.rank() + 1),))
options = auto.Auto(calibration_steps=2)
record = auto.decide(options, hvd, model, lambda: (x, y), torch.device("cpu"),
                     methods=auto.candidate_methods(cfg, options.candidates))
print(f"auto-record {hvd.rank()} {json.dumps(record, sort_keys=True)}", flush=True)
