"""DGC with the reference code's 5-epoch exponential warm-up of the kept ratio: 31.6%, 10%, 3.2%, 1%, 0.32%,
then 0.1% (ratio 0.001 ** ((epoch + 1) / 6)). The paper's own schedule is paper_warmup.py."""
from training.config import configs

configs.train.compression.warmup_epochs = 5
