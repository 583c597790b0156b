"""DGC over torch.distributed: a DDP communication hook (:mod:`dgc.torch.hook`) and a communicator."""
from dgc.torch.communicator import TorchCommunicator, close_process_group
from dgc.torch.hook import DGCHook, dgc_hook

__all__ = ["DGCHook", "TorchCommunicator", "close_process_group", "dgc_hook"]
