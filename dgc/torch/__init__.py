"""DGC over torch.distributed: a DDP communication hook (:mod:`dgc.torch.hook`) and a communicator."""
from dgc.torch.communicator import TorchCommunicator
from dgc.torch.hook import DGCHook, dgc_hook

__all__ = ["DGCHook", "TorchCommunicator", "dgc_hook"]
