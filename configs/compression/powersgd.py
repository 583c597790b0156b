"""PowerSGD (dgc/compressors/powersgd.py): rank 2, warm start, two allreduce rounds, error feedback."""
from dgc.compressors.powersgd import PowerSGDCompressor
from dgc.memory import ResidualMemory
from training.config import Config, configs

configs.train.compression = Config(PowerSGDCompressor, rank=2, seed=0, min_compress_numel=1024)
configs.train.memory = Config(ResidualMemory)
