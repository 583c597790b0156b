"""No compression through dgc's own pipeline: every gradient dense fp32 by an averaging allreduce (the
reference for the other files here; the baseline without any compression config is Horovod's own)."""
from dgc.compressors.base import Compressor
from training.config import Config, configs

configs.train.compression = Config(Compressor)
configs.train.memory = None
