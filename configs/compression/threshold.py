"""Threshold sparsification (dgc/compressors/threshold.py): every value with |x| >= 0.01 (after error
feedback), a count that varies per worker and step, exchanged in two rounds (counts, then padded pairs);
fp16 values, int32 indices, ResidualMemory."""
from dgc.compressors.threshold import ThresholdCompressor
from dgc.memory import ResidualMemory
from training.config import Config, configs

configs.train.compression = Config(ThresholdCompressor, threshold=0.01, fp16_values=True, int32_indices=True,
                                   min_compress_numel=1024)
configs.train.memory = Config(ResidualMemory)
