"""DGC with a 5-epoch exponential warm-up of the kept ratio (§3.3): 31.6%, 10%, 3.2%, 1%, 0.32%, then 0.1%."""
from training.config import configs

configs.train.compression.warmup_epochs = 5
