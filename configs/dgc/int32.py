"""Send DGC indices as int32 instead of int64."""
from training.config import configs

configs.train.compression.int32_indices = True
