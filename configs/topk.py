"""A relative of DGC: top-0.1% sparsification with plain error feedback (residual memory) and ordinary
momentum SGD after the exchange (no momentum correction). Give it after a dataset+model file."""
from dgc.compression import DGCCompressor
from dgc.memory import ResidualMemory
from training.config import Config, configs

configs.train.compression = Config(DGCCompressor, compress_ratio=0.001, sample_ratio=0.01, warmup_epochs=-1,
                                   memory=Config(ResidualMemory))
