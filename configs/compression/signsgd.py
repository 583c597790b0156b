"""signSGD (dgc/compressors/signsgd.py, Bernstein et al. 2018, Algorithm 1 with the workers' mean sign):
1 bit per value, the average of the workers' signs, no memory. The update is lr * sign, far larger than a
gradient step, so this file sets train.lr_multiplier = 0.01 (1/100 of the dataset file's lr)."""
from dgc.compressors.signsgd import SignSGDCompressor
from training.config import Config, configs

configs.train.compression = Config(SignSGDCompressor, scaled=False, min_compress_numel=1024)
configs.train.memory = None
configs.train.lr_multiplier = 0.01
