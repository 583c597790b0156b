"""compression=auto (training/auto.py): in its first steps the trainer times forward + backward (no exchange,
nothing trained) and the link (dense allreduces), asks the cost model (dgc/costmodel.py) for each candidate's
step time and trains with the least lossy one predicted within 5% of the fastest: dense fp32 (Horovod's or
DDP's own allreduce), fp16 (configs/compression/fp16.py) or DGC (configs/compression/dgc.py with
configs/dgc/compact.py's wire format, fused). The choice, its inputs and the predicted times go to stdout,
TensorBoard (text "auto") and metrics.json ("auto"); a resumed run keeps the choice its checkpoint records.
bandwidth (bytes/s each way per worker), latency (s per collective), burst (bytes): a link given instead of
measured (tests, what-if)."""
from training.auto import Auto
from training.config import Config, configs

configs.train.compression = Config(Auto, candidates=("dense", "fp16", "dgc"), calibration_steps=3, tolerance=0.05,
                                   bandwidth=None, latency=None, burst=None)
configs.train.memory = None
configs.train.dense_compression = None
