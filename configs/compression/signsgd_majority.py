"""signSGD with majority vote (dgc/compressors/signsgd.py, Bernstein et al. 2018, Algorithm 3 without
momentum): 1 bit per value, the sign of the sum of the workers' signs applied, no memory. Every compressed
value moves by lr (or 0 on a tie), so this file sets train.lr_multiplier = 0.01 (1/100 of the dataset file's lr)."""
from dgc.compressors.signsgd import SignSGDCompressor
from training.config import Config, configs

configs.train.compression = Config(SignSGDCompressor, majority=True, min_compress_numel=1024)
configs.train.memory = None
configs.train.lr_multiplier = 0.01
