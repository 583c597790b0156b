"""QSGD (dgc/compressors/qsgd.py, Alistarh et al. 2017 with bucketing): 4 levels, 4 bits per value plus one
float32 norm per bucket of 512 values (the paper's bucket size); unbiased, so no memory."""
from dgc.compressors.qsgd import QSGDCompressor
from training.config import Config, configs

configs.train.compression = Config(QSGDCompressor, levels=4, bucket_size=512, min_compress_numel=1024)
configs.train.memory = None
