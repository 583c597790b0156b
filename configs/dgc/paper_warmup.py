"""DGC with the paper's warm-up (§3.3): the kept ratio falls 25%, 6.25%, 1.5625%, 0.39% over the first four
epochs (sparsity 75%, 93.75%, 98.4375%, 99.6%), then 0.1%."""
from training.config import configs

configs.train.compression.warmup_epochs = 4
configs.train.compression.warmup_coeff = 0.25
