"""Horovod implementation of :class:`dgc.communication.Communicator` (Gloo on CPU, NCCL on GPU)."""
import horovod.torch as hvd
import torch


class HorovodCommunicator:
    """Runs payload collectives asynchronously through ``horovod.torch``.

    16-bit float allreduces divide by the worker count before summing, so the sum cannot overflow.
    Horovod 0.28 has no bfloat16 allreduce: a bfloat16 payload travels by allgather (the same bytes per
    worker) and is averaged in float32, in rank order, on arrival."""

    def __init__(self, process_set=hvd.global_process_set):
        self.process_set = process_set

    @property
    def size(self):
        return self.process_set.size()

    @property
    def rank(self):
        return self.process_set.rank()

    def start(self, payload, name):
        tensor = payload.tensor
        if payload.collective == "allreduce" and tensor.dtype == torch.bfloat16:
            bits = tensor.reshape(1, -1).view(torch.int16)
            return "bf16", hvd.allgather_async(bits, name=f"dgc.allreduce.{name}", process_set=self.process_set), tensor
        if payload.collective == "allreduce" and tensor.element_size() < 4:
            return "", hvd.allreduce_async_(tensor, name=f"dgc.allreduce.{name}", op=hvd.Sum,
                                            prescale_factor=1.0 / self.size, process_set=self.process_set), tensor
        if payload.collective == "allreduce":
            return "", hvd.allreduce_async_(tensor, name=f"dgc.allreduce.{name}", op=hvd.Average,
                                            process_set=self.process_set), tensor
        if payload.collective == "allgather":
            return "", hvd.allgather_async(tensor, name=f"dgc.allgather.{name}", process_set=self.process_set), tensor
        raise ValueError(f"HorovodCommunicator: unknown collective {payload.collective!r} for {name!r}; "
                         "expected 'allreduce' or 'allgather'")

    def wait(self, handle):
        kind, op, tensor = handle
        result = hvd.synchronize(op)
        if kind == "bf16":
            parts = result.view(torch.bfloat16)
            total = parts[0].float()
            for part in parts[1:]:
                total += part
            return tensor.copy_(total.div_(parts.shape[0]).view(tensor.shape))
        return result
