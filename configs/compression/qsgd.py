"""QSGD (dgc/compressors/qsgd.py): 4 levels, 4 bits per value plus one norm per tensor; unbiased, so no memory."""
from dgc.compressors.qsgd import QSGDCompressor
from training.config import Config, configs

configs.train.compression = Config(QSGDCompressor, levels=4, min_compress_numel=1024)
configs.train.memory = None
