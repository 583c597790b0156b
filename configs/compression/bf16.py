"""bf16 (dgc/compressors/bf16.py): every gradient tensor as bfloat16 through the allreduce, no memory."""
from dgc.compressors.bf16 import BF16Compressor
from training.config import Config, configs

configs.train.compression = Config(BF16Compressor, min_compress_numel=1)
configs.train.memory = None
