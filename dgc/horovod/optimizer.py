"""A Horovod-style DistributedOptimizer over :class:`dgc.exchange.Exchange`.

Same contract as ``hvd.DistributedOptimizer``: a hook per parameter starts its exchange as soon as its
gradient is ready (after ``backward_passes_per_step`` passes), ``synchronize()`` waits for all of them,
``step()`` synchronizes unless inside ``skip_synchronize()``. What is sent is the compressor's business, what
is kept the memory's, how it travels the communicator's; the per-tensor pipeline is the exchange's.
"""
import contextlib
import warnings

import torch

from dgc.buffers import BufferSnapshot
from dgc.exchange import Exchange
from dgc.horovod.communicator import HorovodCommunicator, hierarchical_communicators
from dgc.optim import step_corrected, unhooked


class _DistributedOptimizer(torch.optim.Optimizer):
    """Mixed into the wrapped optimizer's class by :func:`DistributedOptimizer`."""

    def _setup(self, named_parameters, compression, memory, backward_passes_per_step, communicator,
               dense_compression=None, local_communicator=None, nonfinite="skip", loss_scale=None, model=None):
        params = [p for group in self.param_groups for p in group["params"]]
        if named_parameters is None:
            named_parameters = [(f"param.{i}", p) for i, p in enumerate(params)]
        named_parameters = list(named_parameters)
        names = [name for name, _ in named_parameters]
        if len(set(names)) != len(names):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"DistributedOptimizer: named_parameters has duplicate names {duplicates}")
        name_of = {p: name for name, p in named_parameters}
        unnamed = [i for i, p in enumerate(params) if p not in name_of]
        if unnamed:
            raise ValueError(f"DistributedOptimizer: optimizer parameters at positions {unnamed[:5]} are not "
                             "in named_parameters; pass model.named_parameters() of the optimized model")
        if isinstance(backward_passes_per_step, bool) or not (
                isinstance(backward_passes_per_step, int) and backward_passes_per_step >= 1):
            raise ValueError(f"DistributedOptimizer: backward_passes_per_step={backward_passes_per_step!r} "
                             "must be an int >= 1")
        trained = [(name_of[p], p) for p in params if p.requires_grad]
        self.exchange = Exchange(trained, communicator, compression, memory, optimizer=self,
                                 dense_compressor=dense_compression, local=local_communicator,
                                 nonfinite=nonfinite, loss_scale=loss_scale)
        self._name_of = name_of
        self._buffers = _buffer_snapshot(model, params)
        self._passes = backward_passes_per_step
        self._pending = {}
        self._reset_counters()
        for _, p in trained:
            p.register_post_accumulate_grad_hook(self._hook)

    def _reset_counters(self):
        self._delay = {p: self._passes for p in (r.param for r in self.exchange.routes.values())}
        self._synchronized = False
        self._should_synchronize = True
        self._steps = 0
        self.step_skipped = False

    def _hook(self, p):
        if p in self._pending:
            raise AssertionError(
                f"DistributedOptimizer: gradient of {self._name_of[p]!r} computed more than "
                f"backward_passes_per_step={self._passes} times before step(); raise backward_passes_per_step "
                "to accumulate gradients locally")
        self._delay[p] -= 1
        if self._delay[p] == 0:
            self._pending[p] = self.exchange.start(self._name_of[p], p.grad)

    def synchronize(self):
        """Start what has not started (parameters without a gradient this step send zeros), wait for every
        exchange, write the averaged gradients into ``p.grad``, and agree with every rank whether any gradient
        was non-finite (then ``step_skipped`` is True: ``step()`` changes nothing, residuals and compressor
        state are rolled back; or, with ``nonfinite="stop"``, FloatingPointError on every rank). A second
        call before ``step()`` warns and does nothing (exchanging averaged gradients again would feed them
        into the residuals twice)."""
        if self._synchronized:
            warnings.warn("synchronize() called twice before step(); the gradients were exchanged once")
            return
        for p in self._delay:
            if p not in self._pending:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                self._pending[p] = self.exchange.start(self._name_of[p], p.grad)
        self.exchange.finish(list(self._pending.values()))
        self._pending.clear()
        self._delay = dict.fromkeys(self._delay, self._passes)
        self._synchronized = True
        self.exchange.collect()
        self.step_skipped = self.exchange.end_step()
        if self._buffers is not None:
            self._buffers.end_step(self.step_skipped)

    @property
    def skipped_steps(self):
        """Steps skipped on every rank because some rank's gradient was non-finite."""
        return self.exchange.skipped_steps

    @property
    def last_exchange(self):
        """The last step's statistics (see :meth:`dgc.exchange.Exchange.collect`)."""
        return self.exchange.last_exchange

    @contextlib.contextmanager
    def skip_synchronize(self):
        """Use after an explicit ``synchronize()`` (e.g. to clip gradients) so ``step()`` does not wait again."""
        self._should_synchronize = False
        try:
            yield
        finally:
            self._should_synchronize = True

    def step(self, closure=None):
        """Synchronize, then update: the wrapped optimizer's own step, except a plain ``p -= lr * grad`` for
        tensors whose momentum the memory applied. A first step before any backward (what
        ``hvd.broadcast_optimizer_state`` does to create the state of a fresh optimizer) changes nothing."""
        if (self._steps == 0 and not self._synchronized and not self._pending
                and all(d == self._passes for d in self._delay.values())):
            return None
        if self._should_synchronize:
            if self._synchronized:
                warnings.warn("optimizer.step() called after synchronize() without skip_synchronize(); "
                              "the gradients were exchanged once, not twice")
            else:
                self.synchronize()
        self._synchronized = False
        self._steps += 1
        if self.step_skipped:
            return None
        return step_corrected(self, unhooked(self._base_class.step), self.exchange.corrected, closure)

    def zero_grad(self, set_to_none=True):
        """Clear gradients; also drops passes accumulated towards an unfinished ``backward_passes_per_step``."""
        if self._pending:
            raise AssertionError("DistributedOptimizer: zero_grad() while gradient exchanges are in flight; "
                                 "call step() or synchronize() first")
        self._delay = dict.fromkeys(self._delay, self._passes)
        return self._base_class.zero_grad(self, set_to_none)

    def load_state_dict(self, state_dict):
        """Load the wrapped optimizer's state; exchanges in flight are finished and their averages dropped
        (with ``nonfinite`` set the memory and compressor go back to the step's start; without it that step's
        gradient stays in the residuals), counters reset, and a momentum-correcting memory follows the loaded
        momentum (weight decay is read live anyway)."""
        if self._pending:
            self.exchange.finish(list(self._pending.values()))
            self._pending.clear()
            self.exchange.stats = self.exchange.zero_stats()
            self.exchange.rollback()
        if self._buffers is not None:
            self._buffers.end_step(False)
        self._base_class.load_state_dict(self, state_dict)
        self._reset_counters()
        self.exchange.follow_optimizer()


def DistributedOptimizer(optimizer, named_parameters=None, compression=None, backward_passes_per_step=1,
                         communicator=None, memory=None, dense_compression=None, hierarchical=False,
                         nonfinite="skip", loss_scale=None, model=None):
    """Make ``optimizer`` average its gradients over all workers through ``compression`` (default: dense
    allreduce) and ``memory`` (default: ``compression.memory`` if it has one, else none); tensors too small
    to compress go through ``dense_compression`` (default: dense fp32; e.g. ``FP16Compressor()``).
    ``hierarchical``: average densely within each host first and compress only between hosts (see
    :mod:`dgc.exchange`; needs ``hvd.init(process_sets="dynamic")``); True builds the communicators with
    :func:`~dgc.horovod.communicator.hierarchical_communicators`, a ``(leaders, local)`` pair is used as
    given (e.g. wrapped in :class:`dgc.fused.FusedCommunicator`), and ``communicator`` must then be None.
    ``nonfinite``: a step in which any rank's gradient has NaN/Inf is skipped on every rank ("skip": as if
    that batch had been left out; ``skipped_steps`` counts them) or stops every rank with FloatingPointError
    ("stop"); agreed with one flag of 1 to 4 bytes per step. ``loss_scale``: a :class:`dgc.amp.LossScale` for fp16
    autocast (multiply the loss by ``loss_scale.value``; the exchange unscales and updates it). ``model``: the
    module being trained; its buffers (BatchNorm's running statistics, ``num_batches_tracked``) are copied
    before each step's first forward and put back when the step is skipped (without it they keep what the
    skipped batch's forward made of them; see :class:`dgc.buffers.BufferSnapshot`).
    Leaders then start more collectives than the other ranks: name every Horovod collective you call yourself
    (Horovod's unnamed ones are numbered per process, so they would no longer match and would hang).

    The optimizer object itself is changed (its class becomes a subclass with the exchange mixed in) and
    returned, so an lr scheduler created before wrapping keeps driving it. Its ``state_dict()`` is the
    wrapped optimizer's; each rank's compressor and memory state is ``optimizer.exchange.state_dict()``."""
    if isinstance(optimizer, _DistributedOptimizer):
        raise ValueError("DistributedOptimizer: this optimizer is already distributed; wrap a plain optimizer once")
    local = None
    if hierarchical:
        if communicator is not None:
            raise ValueError("DistributedOptimizer: give either communicator or hierarchical, not both")
        if hierarchical is True:
            hierarchical = hierarchical_communicators()
        if not (isinstance(hierarchical, tuple) and len(hierarchical) == 2 and hierarchical != (None, None)):
            raise ValueError(f"DistributedOptimizer: hierarchical={hierarchical!r}; expected True or a tuple "
                             "(leaders' communicator or None off the leaders, host's communicator or None with "
                             "one rank per host)")
        communicator, local = hierarchical
    elif communicator is None:
        communicator = HorovodCommunicator()
    base = optimizer.__class__
    cls = type(base.__name__, (_DistributedOptimizer, base), {"_base_class": base})
    scheduler_step = optimizer.__dict__.pop("step", None)
    optimizer.__class__ = cls
    cls.step = torch.optim.Optimizer.profile_hook_step(_DistributedOptimizer.step)
    cls.step.hooked = True
    if scheduler_step is not None:
        _count_steps_for_scheduler(optimizer, scheduler_step)
    optimizer._setup(named_parameters, compression, memory, backward_passes_per_step, communicator,
                     dense_compression, local, nonfinite, loss_scale, model)
    return optimizer


def _buffer_snapshot(model, params):
    """The :class:`BufferSnapshot` of ``model`` (None without one), which must hold every optimized parameter."""
    if model is None:
        return None
    if isinstance(model, torch.nn.Module) and not set(params) <= set(model.parameters()):
        raise ValueError("DistributedOptimizer: model= does not hold the optimizer's parameters; pass the model "
                         "being trained (whose buffers a skipped step must restore)")
    return BufferSnapshot(model)


def _count_steps_for_scheduler(optimizer, patched):
    """An lr scheduler created before wrapping replaced ``optimizer.step`` by a counter around the *old*
    class's step; put the same counter around the distributed step, so the scheduler still sees steps and
    every step still exchanges."""
    if not getattr(patched, "_wrapped_by_lr_sched", False):
        raise ValueError("DistributedOptimizer: optimizer.step was replaced on the instance; wrap the optimizer "
                         "before patching its step")

    def step(*args, **kwargs):
        optimizer._opt_called = True
        return type(optimizer).step(optimizer, *args, **kwargs)

    step._wrapped_by_lr_sched = True
    optimizer.step = step
