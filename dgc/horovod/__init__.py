"""DGC over Horovod: ``import dgc.horovod as dgc_hvd; dgc_hvd.DistributedOptimizer(...)``."""
from dgc.exchange import DenseStats
from dgc.horovod.communicator import HorovodCommunicator, hierarchical_communicators
from dgc.horovod.optimizer import DistributedOptimizer

__all__ = ["DenseStats", "DistributedOptimizer", "HorovodCommunicator", "hierarchical_communicators"]
