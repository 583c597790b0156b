"""EF-SignSGD (Karimireddy et al. 2019): the sign scaled by mean |x|, 1 bit per value, with error feedback."""
from dgc.compressors.signsgd import SignSGDCompressor
from dgc.memory import ResidualMemory
from training.config import Config, configs

configs.train.compression = Config(SignSGDCompressor, scaled=True, min_compress_numel=1024)
configs.train.memory = Config(ResidualMemory)
