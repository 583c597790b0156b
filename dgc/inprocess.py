"""N logical workers in one process: exact, deterministic collectives without any collective library.

For tests of the exchange contract and for trying a compressor on one machine::

    group = InProcessGroup(2)
    results = group.run(lambda comm: train_one_worker(comm))   # one thread per rank

Each rank's communicator is ``group.communicator(rank)``; collectives match by name and by how often a rank
has started that name, as Horovod matches them. Averages are computed as :class:`dgc.horovod.HorovodCommunicator`
gets them from Horovod (Gloo), in rank order, so every rank gets the same bits: float32/float64 summed, then
divided by the size; float16 prescaled by 1/size (in float32, rounded to float16), then summed in float16
(each addition rounded); bfloat16 summed in float32 and divided, rounded once. With 2 ranks that is Horovod's
result bit for bit (tested in tests/mp/collectives.py); with more, Gloo's ring adds each chunk of its buffer
in another order, so float16 (and float32) results may differ from it in the last bit. torch.distributed
(:class:`dgc.torch.TorchCommunicator`) agrees for 2 ranks; with more it divides bfloat16 values in bfloat16
and sums them in bfloat16, so its bfloat16 averages differ from Horovod's and these.
"""
import collections
import threading

import torch


class InProcessGroup:
    """The shared state of ``size`` logical workers; ``timeout`` seconds bound every wait (a rank that never
    starts a collective is reported by name instead of hanging the test)."""

    def __init__(self, size, timeout=60.0):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"InProcessGroup: size={size!r} must be an int >= 1")
        self.size = size
        self.timeout = timeout
        self.log = []
        """(rank, name, collective, bytes) of every payload started, in order."""
        self._cond = threading.Condition()
        self._slots = {}
        self._counts = [collections.Counter() for _ in range(size)]

    def communicator(self, rank):
        if not 0 <= rank < self.size:
            raise ValueError(f"InProcessGroup: rank={rank!r} is outside 0..{self.size - 1}")
        return InProcessCommunicator(self, rank)

    def run(self, fn):
        """Call ``fn(communicator)`` for every rank in its own thread; return the results in rank order and
        re-raise the first rank's exception, if any."""
        results, errors = [None] * self.size, [None] * self.size

        def work(rank):
            try:
                results[rank] = fn(self.communicator(rank))
            except BaseException as error:
                errors[rank] = error

        threads = [threading.Thread(target=work, args=(r,), name=f"rank{r}") for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for error in errors:
            if error is not None:
                raise error
        return results

    def _start(self, rank, payload, name):
        with self._cond:
            key = (name, self._counts[rank][name])
            self._counts[rank][name] += 1
            slot = self._slots.setdefault(key, {"collective": payload.collective, "parts": {}, "done": set()})
            if slot["collective"] != payload.collective:
                raise ValueError(f"InProcessGroup: rank {rank} started {payload.collective!r} for {name!r}, "
                                 f"another rank {slot['collective']!r}")
            if payload.collective not in ("allreduce", "allgather", "broadcast"):
                raise ValueError(f"InProcessGroup: unknown collective {payload.collective!r} for {name!r}; "
                                 "expected 'allreduce', 'allgather' or 'broadcast'")
            slot["parts"][rank] = payload.tensor.detach().clone()
            self.log.append((rank, name, payload.collective, payload.tensor.numel() * payload.tensor.element_size()))
            self._cond.notify_all()
        return key, payload.tensor

    def _wait(self, rank, handle):
        key, tensor = handle
        with self._cond:
            slot = self._slots[key]
            if not self._cond.wait_for(lambda: len(slot["parts"]) == self.size, self.timeout):
                missing = sorted(set(range(self.size)) - set(slot["parts"]))
                raise TimeoutError(f"InProcessGroup: ranks {missing} never started {key[0]!r} "
                                   f"(occurrence {key[1]}) within {self.timeout} s")
            parts = [slot["parts"][r] for r in range(self.size)]
            slot["done"].add(rank)
            if len(slot["done"]) == self.size:
                del self._slots[key]
        if slot["collective"] == "allgather":
            return torch.cat(parts)
        if slot["collective"] == "broadcast":
            return tensor.copy_(parts[0])
        if tensor.dtype == torch.float16:       # Horovod's prescale_factor=1/size, then a float16 sum
            scale = torch.tensor(1 / self.size, dtype=torch.float32)
            parts = [(part.float() * scale).half() for part in parts]
            total = parts[0]
            for part in parts[1:]:
                total = total + part
            return tensor.copy_(total)
        total = parts[0].to(torch.promote_types(tensor.dtype, torch.float32), copy=True)
        for part in parts[1:]:
            total += part
        return tensor.copy_(total.div_(self.size))


class InProcessCommunicator:
    """One rank's view of an :class:`InProcessGroup` (the :class:`dgc.communication.Communicator` protocol)."""

    def __init__(self, group, rank):
        self.group, self.rank, self.size = group, rank, group.size

    def start(self, payload, name):
        return self.group._start(self.rank, payload, name)

    def wait(self, handle):
        return self.group._wait(self.rank, handle)
