"""Horovod implementation of :class:`dgc.communication.Communicator` (Gloo on CPU, NCCL on GPU)."""
import horovod.torch as hvd


class HorovodCommunicator:
    """Runs payload collectives asynchronously through ``horovod.torch``."""

    def __init__(self, process_set=hvd.global_process_set):
        self.process_set = process_set

    @property
    def size(self):
        return self.process_set.size()

    def start(self, payload, name):
        if payload.collective == "allreduce":
            return hvd.allreduce_async_(payload.tensor, name=f"dgc.allreduce.{name}", op=hvd.Average,
                                        process_set=self.process_set)
        if payload.collective == "allgather":
            return hvd.allgather_async(payload.tensor, name=f"dgc.allgather.{name}", process_set=self.process_set)
        raise ValueError(f"HorovodCommunicator: unknown collective {payload.collective!r} for {name!r}; "
                         "expected 'allreduce' or 'allgather'")

    def wait(self, handle):
        return hvd.synchronize(handle)
