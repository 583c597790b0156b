"""DGC as one compressor among the others (the full setup, with warm-up options, is configs/dgc/): ratio
0.001, momentum correction and masking, local clipping."""
from dgc.compressors.dgc import DGCCompressor
from dgc.memory import DGCSGDMemory
from training.config import Config, configs

configs.train.compression = Config(DGCCompressor, compress_ratio=0.001, min_compress_numel=1024)
configs.train.memory = Config(DGCSGDMemory, gradient_clipping=5.0, momentum_masking=True)
