"""DGC's compact wire format (on top of configs/dgc/): fp16 values and 16-bit block-offset indices for the
sparse tensors (2 + 2 bytes per value), the dense small ones (BatchNorm, biases) as fp16 too, as the
reference implementation does, and every weight of at least 256 elements sparsified (ResNet-20's first
convolution and classifier included), so little travels dense."""
from dgc.compressors.fp16 import FP16Compressor
from training.config import Config, configs

configs.train.compression.fp16_values = True
configs.train.compression.compact_indices = True
configs.train.compression.min_compress_numel = 256
configs.train.dense_compression = Config(FP16Compressor)
