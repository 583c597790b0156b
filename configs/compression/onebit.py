"""1-bit SGD (dgc/compressors/onebit.py, Seide et al. 2014): signs with two reconstruction values per row,
error feedback (ResidualMemory)."""
from dgc.compressors.onebit import OneBitCompressor
from dgc.memory import ResidualMemory
from training.config import Config, configs

configs.train.compression = Config(OneBitCompressor, min_compress_numel=1024)
configs.train.memory = Config(ResidualMemory)
