"""Top-k with int8 values (a hybrid): exact top-0.1% (dgc/compressors/topk.py), values as int8 with one
float32 scale per tensor (the rounding error stays in the residual), int32 indices, ResidualMemory."""
from dgc.compressors.topk import TopKCompressor
from dgc.memory import ResidualMemory
from training.config import Config, configs

configs.train.compression = Config(TopKCompressor, compress_ratio=0.001, int8_values=True, int32_indices=True,
                                   min_compress_numel=1024)
configs.train.memory = Config(ResidualMemory)
