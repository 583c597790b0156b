"""DGC without warm-up: 0.1% from the first step."""
from training.config import configs

configs.train.compression.warmup_epochs = 0
