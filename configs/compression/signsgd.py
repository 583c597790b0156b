"""signSGD (dgc/compressors/signsgd.py): 1 bit per value, the average of the workers' signs, no memory. The
update is lr * sign, far larger than a gradient step: lower train.optimizer.lr (e.g. by 100x)."""
from dgc.compressors.signsgd import SignSGDCompressor
from training.config import Config, configs

configs.train.compression = Config(SignSGDCompressor, scaled=False, min_compress_numel=1024)
configs.train.memory = None
