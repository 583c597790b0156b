"""Fused exchange: every payload started before the next ``wait`` travels in one collective per
(collective, dtype): one packed allgather for all compressed tensors of a step, one allreduce for all dense
ones. A communicator wrapper, so every backend and compressor gets it unchanged. The exchange calls
:meth:`FusedCommunicator.flush` at the end of each phase of :meth:`dgc.exchange.Exchange.finish` (host
averages, each compressed round, broadcasts to the host), so a fused collective never mixes phases and
every rank puts the same payloads into it.

It trades the overlap of communication with the backward pass (nothing leaves before the first ``wait``
or ``future``: under the overlapping DDP hook each bucket's payloads still leave together, while later
buckets compute) for far fewer collectives: on a slow or high-latency link each collective costs a round trip, and
Horovod does not fuse allgathers. Every worker's payloads must have the same sizes (true of every
compressor here: sizes are known before the collective), and are packed in name order, so the fused
buffers line up on every rank."""
from dataclasses import dataclass
from typing import Any

import torch

from dgc.compressors.base import Payload


@dataclass
class _Handle:
    name: str
    payload: Payload
    result: Any = None
    launched: Any = None
    """The future of the fused collective that carries it, once started through :meth:`FusedCommunicator.future`."""


class FusedCommunicator:
    """Wraps a communicator (Horovod, in-process, torch.distributed). ``collectives`` counts the collectives
    it actually started (for benchmarks)."""

    def __init__(self, inner):
        self.inner = inner
        self.queue = []
        self.collectives = 0
        self._twin = None

    @property
    def size(self):
        return self.inner.size

    @property
    def rank(self):
        return self.inner.rank

    def start(self, payload, name):
        handle = _Handle(name, payload)
        self.queue.append(handle)
        return handle

    def wait(self, handle):
        if handle.result is None:
            if handle.launched is None:
                self.flush()
            else:
                handle.launched.wait()
        return handle.result

    def flush(self):
        """Start one collective per (collective, dtype) of the queued payloads, in name order, and split the
        results back into every payload's own result."""
        for handles, inner_handle, numel in self._launch():
            self._split(handles, self.inner.wait(inner_handle), numel)

    def future(self, handle):
        """A future of ``handle``'s result; the queue (``handle`` in it) starts now if it has not (the inner
        communicator's ``future``: one per fused collective, split on completion)."""
        if handle.result is not None:
            future = torch.futures.Future()
            future.set_result(handle.result)
            return future
        if handle.launched is None:
            for handles, inner_handle, numel in self._launch():
                launched = self.inner.future(inner_handle).then(
                    lambda f, handles=handles, numel=numel: self._split(handles, f.wait(), numel))
                for h in handles:
                    h.launched = launched
        return handle.launched.then(lambda _: handle.result)

    def twin(self):
        """A fused communicator over the inner one's twin (a queue of its own), made once."""
        if self._twin is None:
            self._twin = FusedCommunicator(self.inner.twin())
        return self._twin

    def _launch(self):
        """Start the queue's fused collectives; return (handles, inner handle, elements) of each."""
        queue, self.queue = sorted(self.queue, key=lambda h: h.name), []
        groups = {}
        for handle in queue:
            groups.setdefault((handle.payload.collective, handle.payload.tensor.dtype), []).append(handle)
        started = []
        for (collective, dtype), handles in groups.items():
            flat = torch.cat([h.payload.tensor.reshape(-1) for h in handles])
            started.append((handles, self.inner.start(Payload(flat, collective, 0), f"fused.{collective}.{dtype}"),
                            flat.numel()))
            self.collectives += 1
        return started

    def _split(self, handles, result, numel):
        """Every handle's part of its fused collective's ``result``."""
        if handles[0].payload.collective in ("allreduce", "broadcast"):
            parts = result.reshape(-1).split([h.payload.tensor.numel() for h in handles])
            for h, part in zip(handles, parts):
                h.result = part.view(h.payload.tensor.shape)
            return
        if result.numel() != self.size * numel:
            raise RuntimeError(f"FusedCommunicator: the fused allgather of {[h.name for h in handles][:3]}... "
                               f"returned {result.numel()} elements, expected {self.size} x {numel}: workers "
                               "sent payloads of different sizes")
        rows = result.view(self.size, numel)
        offset = 0
        for h in handles:
            shape = h.payload.tensor.shape
            h.result = rows[:, offset:offset + shape.numel()].reshape(self.size * shape[0], *shape[1:])
            offset += shape.numel()
