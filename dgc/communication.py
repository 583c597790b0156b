"""The exchange interface between compressors and a collective library.

A communicator starts the collective a :class:`dgc.compression.Payload` names and later returns its
result; the optimizer glue never needs to know which library (Horovod, an in-process simulator, a
hierarchical intra-/inter-host exchange) runs it.
"""
from typing import Any, Protocol

from dgc.compression import Payload


class Communicator(Protocol):
    size: int
    """Number of workers whose payloads are combined."""

    def start(self, payload: Payload, name: str) -> Any:
        """Begin the payload's collective ("allreduce": average in place; "allgather": concatenate along
        dim 0) under a name identical on every worker; return a handle."""

    def wait(self, handle: Any):
        """Finish the collective and return its result tensor."""
