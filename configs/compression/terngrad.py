"""TernGrad (dgc/compressors/terngrad.py): three levels, 2 bits per value plus one scale; unbiased, no memory."""
from dgc.compressors.terngrad import TernGradCompressor
from training.config import Config, configs

configs.train.compression = Config(TernGradCompressor, min_compress_numel=1024)
configs.train.memory = None
