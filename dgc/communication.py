"""The interface between the exchange and a collective library.

A communicator starts the collective a :class:`dgc.compressors.Payload` names and later returns its
result; the exchange (:mod:`dgc.exchange`) never needs to know which library runs it: Horovod
(:class:`dgc.horovod.HorovodCommunicator`), torch.distributed (:class:`dgc.torch.TorchCommunicator`) or N
logical workers in one process (:class:`dgc.inprocess.InProcessGroup`); :class:`dgc.fused.FusedCommunicator`
wraps any of them.
"""
from typing import Any, Protocol

from dgc.compressors.base import Payload


class Communicator(Protocol):
    size: int
    """Number of workers whose payloads are combined."""
    rank: int
    """This worker's position among them (the order of an allgather's result)."""

    def start(self, payload: Payload, name: str) -> Any:
        """Begin the payload's collective ("allreduce": average in place; "allgather": concatenate along
        dim 0, in rank order; "broadcast": rank 0's tensor into every worker's, in place) under a name
        identical on every worker; return a handle."""

    def wait(self, handle: Any):
        """Finish the collective and return its result tensor."""

    # Optional: ``flush()``, for a communicator that holds payloads back to batch them (FusedCommunicator):
    # start every queued payload now. The exchange calls it at the end of each phase of its finish.
    # Optional: ``future(handle)`` -> torch.futures.Future whose value is the result tensor ``wait(handle)``
    # returns (a batching communicator starts its queue then); its callbacks may run on the collective
    # library's own thread (Gloo) or at once (NCCL). Used by Exchange.finish_future (the overlapping DDP hook).
    # Optional: ``twin()`` -> a communicator over the same workers whose collectives are matched apart from
    # this one's (torch: a second process group, made once): where finish_future starts later rounds.
