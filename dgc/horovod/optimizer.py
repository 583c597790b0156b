"""A Horovod DistributedOptimizer whose gradients go through a compressor.

Same contract as ``hvd.DistributedOptimizer``: a hook per parameter starts its exchange as soon as its
gradient is ready (after ``backward_passes_per_step`` passes), ``synchronize()`` waits for all of them,
``step()`` synchronizes unless inside ``skip_synchronize()``. What is sent is the compressor's business
(:mod:`dgc.compression`); how, the communicator's (:mod:`dgc.communication`).
"""
import contextlib
import warnings

import torch

from dgc.compression import Compressor
from dgc.optim import DGCSGD


class _DistributedOptimizer(torch.optim.Optimizer):
    """Mixed into the wrapped optimizer's class by :func:`DistributedOptimizer`."""

    def _setup_exchange(self, named_parameters, compression, backward_passes_per_step, communicator):
        params = [p for group in self.param_groups for p in group["params"]]
        if named_parameters is None:
            named_parameters = [(f"param.{i}", p) for i, p in enumerate(params)]
        named_parameters = list(named_parameters)
        names = [name for name, _ in named_parameters]
        if len(set(names)) != len(names):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"DistributedOptimizer: named_parameters has duplicate names {duplicates}")
        self._names = {p: name for name, p in named_parameters}
        unnamed = [i for i, p in enumerate(params) if p not in self._names]
        if unnamed:
            raise ValueError(f"DistributedOptimizer: optimizer parameters at positions {unnamed[:5]} are not "
                             "in named_parameters; pass model.named_parameters() of the optimized model")
        if not (isinstance(backward_passes_per_step, int) and backward_passes_per_step >= 1):
            raise ValueError(f"DistributedOptimizer: backward_passes_per_step={backward_passes_per_step!r} "
                             "must be an int >= 1")
        self.compression = compression if compression is not None else Compressor()
        self.communicator = communicator
        trained = [(self._names[p], p) for p in params if p.requires_grad]
        self.compression.initialize(trained, world_size=communicator.size)
        compressed = {p for name, p in trained if self.compression.is_compressed(name)}
        memory = getattr(self.compression, "memory", None)
        if compressed and getattr(memory, "momentum", 0) and not isinstance(self, DGCSGD):
            raise TypeError(f"DistributedOptimizer: the compression memory applies momentum "
                            f"({type(memory).__name__}), so the optimizer must be dgc.optim.DGCSGD, "
                            f"not {type(self).__mro__[1].__name__} (momentum would be applied twice)")
        if isinstance(self, DGCSGD):
            self.compressed_params = compressed
        self._compressed = compressed
        self._group_of = {p: group for group in self.param_groups for p in group["params"]}
        self._passes = backward_passes_per_step
        self._delay = {p: backward_passes_per_step for _, p in trained}
        self._handles = {}
        self._synchronized = False
        self._should_synchronize = True
        self._dense_bytes = sum(p.numel() * 4 for _, p in trained)
        self._dense_values = sum(p.numel() for _, p in trained)
        self._sent_bytes = self._sent_values = 0
        self.last_exchange = {}
        for _, p in trained:
            p.register_post_accumulate_grad_hook(self._hook)

    def _hook(self, p):
        if p in self._handles:
            raise AssertionError(
                f"DistributedOptimizer: gradient of {self._names[p]!r} computed more than "
                f"backward_passes_per_step={self._passes} times before step(); raise backward_passes_per_step "
                "to accumulate gradients locally")
        self._delay[p] -= 1
        if self._delay[p] == 0:
            self._handles[p] = self._start(p)

    def _start(self, p):
        """Compress and start the exchange of one parameter's gradient."""
        grad = p.grad
        if p in self._compressed and isinstance(self, DGCSGD):
            weight_decay = self._group_of[p].get("weight_decay", 0)
            if weight_decay:
                grad.add_(p.detach(), alpha=weight_decay)
        payload, ctx = self.compression.compress(grad, self._names[p])
        self._sent_bytes += payload.tensor.numel() * payload.tensor.element_size()
        self._sent_values += payload.num_values
        return self.communicator.start(payload, self._names[p]), ctx

    def synchronize(self):
        """Start what has not started (parameters without a gradient this step send zeros), wait for every
        exchange, write the averaged gradients into ``p.grad``."""
        for p in self._delay:
            if p not in self._handles:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                self._handles[p] = self._start(p)
        for p, (handle, ctx) in self._handles.items():
            self.compression.decompress(self.communicator.wait(handle), ctx, out=p.grad)
            self._delay[p] = self._passes
        self._handles.clear()
        self._synchronized = True
        self.last_exchange = {
            "bytes_sent": self._sent_bytes, "dense_bytes": self._dense_bytes,
            "compression_ratio": self._sent_bytes / max(self._dense_bytes, 1),
            "density": self._sent_values / max(self._dense_values, 1)}
        self._sent_bytes = self._sent_values = 0

    @contextlib.contextmanager
    def skip_synchronize(self):
        """Use after an explicit ``synchronize()`` (e.g. to clip gradients) so ``step()`` does not wait again."""
        self._should_synchronize = False
        try:
            yield
        finally:
            self._should_synchronize = True

    def step(self, closure=None):
        if self._should_synchronize:
            if self._synchronized:
                warnings.warn("optimizer.step() called after synchronize() without skip_synchronize(); "
                              "the gradients were exchanged once, not twice")
            else:
                self.synchronize()
        self._synchronized = False
        return super(self.__class__, self).step(closure)

    def zero_grad(self, *args, **kwargs):
        if self._handles:
            raise AssertionError("DistributedOptimizer: zero_grad() while gradient exchanges are in flight; "
                                 "call step() or synchronize() first")
        return super(self.__class__, self).zero_grad(*args, **kwargs)


def DistributedOptimizer(optimizer, named_parameters=None, compression=None, backward_passes_per_step=1,
                         communicator=None):
    """Wrap ``optimizer`` so that ``step()`` uses gradients averaged over all workers through
    ``compression`` (default: dense allreduce). Returns an instance of the optimizer's own class with the
    exchange mixed in; its state (``state_dict()``) is the wrapped optimizer's, the compressor's state is
    ``optimizer.compression.state_dict()``."""
    if communicator is None:
        from dgc.horovod.communicator import HorovodCommunicator
        communicator = HorovodCommunicator()
    cls = type(optimizer.__class__.__name__, (optimizer.__class__,),
               {k: v for k, v in vars(_DistributedOptimizer).items() if not k.startswith("__")})
    wrapped = cls.__new__(cls)
    wrapped.__dict__.update(optimizer.__dict__)
    wrapped._setup_exchange(named_parameters, compression, backward_passes_per_step, communicator)
    return wrapped
