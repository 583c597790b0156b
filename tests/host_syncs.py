"""Counting the operations that make the host wait for a GPU, on the CPU.

A CUDA kernel launch returns at once; the host waits only where it needs a value the device computes: a
scalar read (``.item()``, ``float(t)``, ``bool(t)``, ``if t:``), or an op whose output size depends on the
data (``nonzero``, boolean-mask indexing, ``unique``, ...), which must copy a count back before it can allocate.
On the CPU nothing waits, so these are counted instead: :class:`HostSyncCounter` sees every aten op the
code under it runs and records those that are GPU->host syncs on CUDA. It is a proxy: what it counts on the
CPU is what would stall a GPU's queue, op for op, whatever device the test ran on.
"""
import torch
from torch.utils._python_dispatch import TorchDispatchMode

_ALWAYS = {
    "_local_scalar_dense",    # .item(), float(t), int(t), bool(t), if t: (is_nonzero and equal on CUDA too)
    "is_nonzero", "equal",
    "nonzero",                # (nonzero_static has a fixed size: no sync)
    "unique", "_unique", "_unique2", "unique_consecutive", "unique_dim", "unique_dim_consecutive",
    "bincount", "masked_select",
}
"""Ops (overload packets) that sync on CUDA whatever their arguments."""


def _syncs(func, args, kwargs):
    """Whether ``func`` applied to ``args``/``kwargs`` would wait for the GPU."""
    name = func.overloadpacket.__name__
    if name in _ALWAYS:
        return True
    if name == "repeat_interleave":     # repeats as a tensor: the output's size is their sum unless given
        return func._overloadname == "Tensor" and kwargs.get("output_size") is None
    if name in ("index", "index_put", "index_put_", "_index_put_impl_"):   # a boolean mask: nonzero inside
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices)
    return False


class HostSyncCounter(TorchDispatchMode):
    """``with HostSyncCounter() as syncs: ...``: ``syncs.count`` operations under it would each have made the
    host wait for the GPU; ``syncs.ops`` names them in order (aten op names, e.g. ``"_local_scalar_dense"``,
    ``"nonzero"``, ``"index (bool mask)"``). ``Tensor.tolist()`` (a device->host copy on CUDA, which never
    reaches the dispatcher for a CPU tensor) is recorded as ``"tolist"`` while the counter is active."""

    def __init__(self):
        super().__init__()
        self.ops = []
        self._tolist = None

    def __enter__(self):
        self._tolist = tolist = torch.Tensor.tolist

        def counted(tensor):
            self.ops.append("tolist")
            return tolist(tensor)

        torch.Tensor.tolist = counted
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)

    @property
    def count(self):
        return len(self.ops)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _syncs(func, args, kwargs):
            name = func.overloadpacket.__name__
            self.ops.append(f"{name} (bool mask)" if name.startswith(("index", "_index")) else name)
        return func(*args, **kwargs)
