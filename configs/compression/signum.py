"""Signum with majority vote (dgc/compressors/signum.py): each worker's momentum (beta 0.9) as 1 bit per
value, the sign of the workers' vote applied, no memory. The momentum is the compressor's, so the optimizer's
momentum is set to 0; every compressed value moves by lr, so this file sets train.lr_multiplier = 0.01 (1/100
of the dataset file's lr)."""
from dgc.compressors.signum import SignumCompressor
from training.config import Config, configs

configs.train.compression = Config(SignumCompressor, beta=0.9, min_compress_numel=1024)
configs.train.memory = None
configs.train.optimizer.momentum = 0.0
configs.train.optimizer.nesterov = False
configs.train.lr_multiplier = 0.01
