"""Natural compression (dgc/compressors/natural.py): every value stochastically rounded to a power of two
(unbiased), sign and exponent in one byte, no memory."""
from dgc.compressors.natural import NaturalCompressor
from training.config import Config, configs

configs.train.compression = Config(NaturalCompressor, min_compress_numel=1024)
configs.train.memory = None
