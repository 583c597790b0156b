"""Horovod implementation of :class:`dgc.communication.Communicator` (Gloo on CPU, NCCL on GPU), and the
process sets of the hierarchical exchange."""
import os
import socket

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
        if payload.collective == "broadcast":    # Horovod's root is a global rank: the set's first
            root = self.process_set.ranks[0] if self.process_set.ranks else 0
            return "", hvd.broadcast_async_(tensor, root, name=f"dgc.broadcast.{name}",
                                            process_set=self.process_set), tensor
        raise ValueError(f"HorovodCommunicator: unknown collective {payload.collective!r} for {name!r}; "
                         "expected 'allreduce', 'allgather' or 'broadcast'")

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


def hierarchical_communicators():
    """``(leaders, local)`` for :class:`dgc.exchange.Exchange`'s hierarchical mode: a communicator over every
    host's first rank (None on the other ranks) and one over this host's ranks; with one rank per host,
    ``(global, None)``: nothing to average within a host, the flat exchange. Hosts are told apart by
    ``HOROVOD_HOSTNAME`` (what horovodrun's ``-H`` names; else the hostname). Every rank must call it, in
    the same order as its other process-set changes, after ``hvd.init(process_sets="dynamic")``."""
    hosts = hvd.allgather_object(os.environ.get("HOROVOD_HOSTNAME") or socket.gethostname())
    ranks_of = {}
    for rank, host in enumerate(hosts):
        ranks_of.setdefault(host, []).append(rank)
    groups = list(ranks_of.values())
    if len({len(g) for g in groups}) > 1:
        raise ValueError("hierarchical exchange: hosts run different numbers of ranks "
                         f"({ {h: len(r) for h, r in ranks_of.items()} }); the average over hosts of host averages "
                         "is the average over ranks only when every host has as many")

    if len(groups) == hvd.size():
        return HorovodCommunicator(), None

    def process_set(ranks):
        if len(ranks) == hvd.size():
            return hvd.global_process_set
        try:
            return hvd.add_process_set(ranks)
        except ValueError as error:
            raise ValueError(f"hierarchical exchange: cannot add Horovod process set {ranks}: {error} (call "
                             'hvd.init(process_sets="dynamic") before building the exchange)') from None

    local_sets = [process_set(g) for g in groups]      # every rank adds every set, in one order
    leaders = process_set([g[0] for g in groups])
    mine = next(s for s, g in zip(local_sets, groups) if hvd.rank() in g)
    return (HorovodCommunicator(leaders) if hvd.rank() in (g[0] for g in groups) else None,
            HorovodCommunicator(mine))
