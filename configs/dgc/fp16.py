"""Send DGC values as fp16 (decoded to fp32 before the scatter-add)."""
from training.config import configs

configs.train.compression.fp16_values = True
