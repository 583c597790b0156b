"""A relative of DGC: exact top-0.1% sparsification (dgc/compressors/topk.py) with plain error feedback
(residual memory) and ordinary momentum SGD after the exchange (no momentum correction). Give it after a
dataset+model file."""
from dgc.compressors.topk import TopKCompressor
from dgc.memory import ResidualMemory
from training.config import Config, configs

configs.train.compression = Config(TopKCompressor, compress_ratio=0.001, fp16_values=False, int32_indices=False,
                                   min_compress_numel=1024)
configs.train.memory = Config(ResidualMemory)
