"""TernGrad as in the paper (dgc/compressors/terngrad.py, Wen et al. 2017 with its gradient clipping): each
tensor clipped to 2.5 standard deviations, then three levels, 2 bits per value plus one scale, no memory.
Lower variance than terngrad.py, but biased (a clipped value's expectation is the clipped value)."""
from dgc.compressors.terngrad import TernGradCompressor
from training.config import Config, configs

configs.train.compression = Config(TernGradCompressor, clip_sigma=2.5, min_compress_numel=1024)
configs.train.memory = None
