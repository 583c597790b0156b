"""DGC over Horovod: ``import dgc.horovod as dgc_hvd; dgc_hvd.DistributedOptimizer(...)``."""
from dgc.horovod.communicator import HorovodCommunicator, hierarchical_communicators
from dgc.horovod.optimizer import DenseStats, DistributedOptimizer

__all__ = ["DenseStats", "DistributedOptimizer", "HorovodCommunicator", "hierarchical_communicators"]
