"""Are the data-parallel replicas still the same model? A bit-exact checksum per tensor, compared across ranks.

Every rank applies the same averaged update, so parameters must stay bitwise identical; a rank that drifts
(a non-deterministic kernel, a bit flip, a bug in an exchange) would otherwise train a different model
silently, and only rank 0's would be saved. Large trainers check the same (Megatron-LM compares parameter
hashes across data-parallel replicas). One collective per check: an int64 allgather of one checksum per
tensor through any :class:`dgc.communication.Communicator`; every rank sees the same gathered checksums, so
every rank raises the same :class:`ReplicaMismatch`.
"""
import torch

from dgc.compressors.base import Payload

_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class ReplicaMismatch(RuntimeError):
    """Raised on every rank when some rank's tensors differ from rank 0's."""


def replicated_tensors(module):
    """``(name, tensor)`` of what every rank must hold bit for bit: every parameter and every non-floating
    buffer (e.g. ``num_batches_tracked``). Floating buffers are left out: Horovod leaves each rank its own
    BatchNorm running statistics, and DDP broadcasts rank 0's at each forward, after which each rank's
    forward moves them by its own batch."""
    return [*module.named_parameters(),
            *((n, b) for n, b in module.named_buffers() if not (b.is_floating_point() or b.is_complex()))]


def checksum(tensor):
    """A 0-dim int64 on the tensor's device: the sum of the elements' bit patterns times odd position weights
    (wrapping): any change of one element's bits (one ulp, -0.0 for 0.0, another NaN) changes it."""
    flat = tensor.detach().reshape(-1)
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    elif flat.is_floating_point() or flat.is_complex():
        flat = flat.view(_BITS[min(flat.element_size(), 8)])
    weights = torch.arange(1, 2 * flat.numel(), 2, dtype=torch.int64, device=flat.device)
    return (flat.to(torch.int64) * weights).sum()


def check_replicas(communicator, named_tensors, when="now"):
    """Compare the checksums of ``named_tensors`` (the same names, in the same order, on every rank) across
    ``communicator``'s ranks; raise :class:`ReplicaMismatch` on every rank, naming the ranks that differ from
    rank 0 and the first tensor that differs, if any does. ``when``: said in the message (e.g. "after step 40")."""
    named_tensors = list(named_tensors)
    if not named_tensors:
        return
    mine = torch.stack([checksum(t) for _, t in named_tensors])
    gathered = communicator.wait(communicator.start(Payload(mine, "allgather", 0), "dgc.replicas"))
    gathered = gathered.view(communicator.size, len(named_tensors)).cpu()
    differs = gathered != gathered[0]
    if not differs.any():
        return
    ranks = differs.any(1).nonzero().flatten().tolist()
    columns = differs.any(0).nonzero().flatten().tolist()
    first = named_tensors[columns[0]][0]
    raise ReplicaMismatch(f"replicas differ {when}: ranks {ranks} hold other values than rank 0, first in "
                          f"{first!r} ({len(columns)} of {len(named_tensors)} tensors differ); the ranks no longer "
                          "train the same model")
