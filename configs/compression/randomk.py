"""Random-k (dgc/compressors/randomk.py): 1% of each large gradient at positions shared by all workers, values
by allreduce, with error feedback (ResidualMemory)."""
from dgc.compressors.randomk import RandomKCompressor
from dgc.memory import ResidualMemory
from training.config import Config, configs

configs.train.compression = Config(RandomKCompressor, compress_ratio=0.01, seed=0, min_compress_numel=1024)
configs.train.memory = Config(ResidualMemory)
