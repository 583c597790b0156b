"""Uniform 8-bit quantization (dgc/compressors/uniform.py): per 256-value chunk a min and a step, codes of
one byte, rounding error fed back (ResidualMemory)."""
from dgc.compressors.uniform import UniformCompressor
from dgc.memory import ResidualMemory
from training.config import Config, configs

configs.train.compression = Config(UniformCompressor, bits=8, chunk=256, min_compress_numel=1024)
configs.train.memory = Config(ResidualMemory)
