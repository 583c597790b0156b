"""fp16 (dgc/compressors/fp16.py, Horovod's Compression.fp16 on our pipeline): every gradient tensor as half
precision through the allreduce, no memory."""
from dgc.compressors.fp16 import FP16Compressor
from training.config import Config, configs

configs.train.compression = Config(FP16Compressor, min_compress_numel=1)
configs.train.memory = None
