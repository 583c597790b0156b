"""A Horovod-style DistributedOptimizer over :class:`dgc.exchange.Exchange`.

A drop-in for ``hvd.DistributedOptimizer``: Horovod's arguments are taken with Horovod's meaning or refused
by name. A hook per parameter starts its exchange as soon as its gradient is ready (after
``backward_passes_per_step`` passes), ``synchronize()`` waits for all of them, ``step()`` synchronizes unless
inside ``skip_synchronize()``. What is sent is the compressor's business, what is kept the memory's, how it
travels the communicator's; the per-tensor pipeline is the exchange's. Sparse gradients travel as Horovod
sends them (indices and values by allgather) or densified (``sparse_as_dense``).
"""
import contextlib
import numbers
import warnings
from dataclasses import dataclass
from typing import Any

import horovod.torch as hvd
import torch
from horovod.torch.compression import Compressor as HorovodCompressor

from dgc.buffers import BufferSnapshot
from dgc.compressors.base import Payload
from dgc.compressors.fp16 import FP16Compressor
from dgc.exchange import Exchange
from dgc.fused import FusedCommunicator
from dgc.horovod.communicator import HorovodCommunicator, hierarchical_communicators
from dgc.optim import step_corrected, unhooked

_OP_NAMES = {hvd.Average: "Average", hvd.Sum: "Sum", hvd.Adasum: "Adasum", hvd.Min: "Min", hvd.Max: "Max",
             hvd.Product: "Product"}


@dataclass
class _SparsePending:
    """A sparse gradient in flight: the handles of the allgathers of its indices and of its values."""
    param: torch.Tensor
    indices: Any
    values: Any


def _check_passes(passes):
    if isinstance(passes, bool) or not (isinstance(passes, int) and passes >= 1):
        raise ValueError(f"DistributedOptimizer: backward_passes_per_step={passes!r} must be an int >= 1")
    return passes


class _DistributedOptimizer(torch.optim.Optimizer):
    """Mixed into the wrapped optimizer's class by :func:`DistributedOptimizer`."""

    def _setup(self, named_parameters, compression, memory, backward_passes_per_step, communicator,
               dense_compression=None, local_communicator=None, nonfinite="skip", loss_scale=None,
               process_set=None, sum_over=None, sparse_as_dense=False, model=None):
        params = [p for group in self.param_groups for p in group["params"]]
        if named_parameters is None:
            named_parameters = [(f"param.{i}", p) for i, p in enumerate(params)]
        named_parameters = list(named_parameters)
        bad = [(i, entry) for i, entry in enumerate(named_parameters)
               if not (isinstance(entry, tuple) and len(entry) == 2)]
        if bad:
            raise ValueError(f"DistributedOptimizer: named_parameters entry {bad[0][0]} is {type(bad[0][1]).__name__} "
                             f"{str(bad[0][1])[:60]!r}; expected (name, parameter) pairs, as model.named_parameters() "
                             "gives")
        names = [name for name, _ in named_parameters]
        if len(set(names)) != len(names):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"DistributedOptimizer: named_parameters has duplicate names {duplicates}")
        name_of = {p: name for name, p in named_parameters}
        unnamed = [i for i, p in enumerate(params) if p not in name_of]
        if unnamed:
            raise ValueError(f"DistributedOptimizer: optimizer parameters at positions {unnamed[:5]} are not "
                             "in named_parameters; pass model.named_parameters() of the optimized model")
        trained = [(name_of[p], p) for p in params if p.requires_grad]
        self.exchange = Exchange(trained, communicator, compression, memory, optimizer=self,
                                 dense_compressor=dense_compression, local=local_communicator,
                                 nonfinite=nonfinite, loss_scale=loss_scale)
        self._parameter_names = name_of     # Horovod's name for it (its tests read it)
        self._buffers = _buffer_snapshot(model, params)
        self.backward_passes_per_step = _check_passes(backward_passes_per_step)
        self.process_set = process_set if process_set is not None else hvd.global_process_set
        self._member = process_set is None or process_set.included()
        self._sum_over = sum_over
        self.sparse_as_dense = sparse_as_dense
        self._pending = {}
        self._densified = {}
        self._reset_counters()
        if self._member:        # Horovod's rule: ranks outside the process set neither hook nor exchange
            for _, p in trained:
                p.register_post_accumulate_grad_hook(self._hook)

    def _reset_counters(self):
        self._delay = {p: self.backward_passes_per_step for p in (r.param for r in self.exchange.routes.values())}
        self._synchronized = False
        self._should_synchronize = True
        self._steps = 0
        self.step_skipped = False

    def set_backward_passes_per_step(self, passes):
        """Horovod's: accumulate ``passes`` backward passes locally before each exchange, from now on."""
        if self._pending:
            raise AssertionError("DistributedOptimizer: set_backward_passes_per_step() while gradient exchanges "
                                 "are in flight; call step() or synchronize() first")
        self.backward_passes_per_step = _check_passes(passes)
        self._delay = dict.fromkeys(self._delay, passes)

    def _hook(self, p):
        if p in self._pending:
            raise AssertionError(
                f"DistributedOptimizer: gradient of {self._parameter_names[p]!r} computed more than "
                f"backward_passes_per_step={self.backward_passes_per_step} times before step(); raise "
                "backward_passes_per_step to accumulate gradients locally")
        self._delay[p] -= 1
        if self._delay[p] == 0:
            self._pending[p] = self._start(p)

    def _start(self, p):
        """Start ``p``'s exchange; a sparse gradient densified (``sparse_as_dense``) or, as Horovod sends it,
        as its indices and values by allgather (dense routes of a flat exchange only)."""
        name, grad = self._parameter_names[p], p.grad
        if not grad.is_sparse:
            return self.exchange.start(name, grad)
        if self.sparse_as_dense:
            self._densified[p] = grad.to_dense()
            return self.exchange.start(name, self._densified[p])
        if self.exchange.routes[name].compressed or self.exchange.local is not None:
            where = ("is compressed" if self.exchange.routes[name].compressed
                     else "goes through the hierarchical exchange")
            raise ValueError(f"DistributedOptimizer: the gradient of {name!r} is sparse (e.g. nn.Embedding("
                             f"sparse=True)) and {where}, which needs dense gradients; pass sparse_as_dense=True")
        grad = grad.coalesce()
        indices, values = grad.indices().t().contiguous(), grad.values().contiguous()
        values = self.exchange._checked(values.reshape(-1), name).view(values.shape)    # into the step's flag
        stats, comm = self.exchange.stats, self._sparse_communicator()
        stats["bytes_sent"] += indices.numel() * indices.element_size() + values.numel() * values.element_size()
        stats["values_sent"] += values.numel()
        stats["collectives"] += 2
        return _SparsePending(p, comm.start(Payload(indices, "allgather", 0), f"{name}.sparse_indices"),
                              comm.start(Payload(values, "allgather", values.numel()), f"{name}.sparse_values"))

    def _sparse_communicator(self):
        """The communicator of sparse gradients: the exchange's, unfused (their sizes differ between ranks,
        which a fused allgather cannot pack)."""
        comm = self.exchange.communicator
        return comm.inner if isinstance(comm, FusedCommunicator) else comm

    def _finish(self):
        """Wait for every exchange in flight and put the averages into ``p.grad`` (sparse where it was)."""
        pending = list(self._pending.values())
        self.exchange.finish([x for x in pending if not isinstance(x, _SparsePending)])
        comm = self._sparse_communicator()
        for x in pending:
            if isinstance(x, _SparsePending):
                indices, values = comm.wait(x.indices).t(), comm.wait(x.values)
                values = values if self._sum_over else values / comm.size
                x.param.grad = torch.sparse_coo_tensor(indices, values, x.param.grad.shape,
                                                       check_invariants=False).coalesce()
        if self._sum_over:      # op=hvd.Sum: the sum over the process set, the average times its size
            for x in pending:
                if not isinstance(x, _SparsePending):
                    x.out.mul_(self._sum_over)
        for p, dense in self._densified.items():
            p.grad = dense.to_sparse()
        self._pending.clear()
        self._densified.clear()

    def synchronize(self):
        """Start what has not started (parameters without a gradient this step send zeros), wait for every
        exchange, write the averaged gradients into ``p.grad``, and agree with every rank whether any gradient
        was non-finite (then ``step_skipped`` is True: ``step()`` changes nothing, residuals and compressor
        state are rolled back; or, with ``nonfinite="stop"``, FloatingPointError on every rank). A second
        call before ``step()`` warns and does nothing (exchanging averaged gradients again would feed them
        into the residuals twice). Outside the process set: nothing (Horovod's rule)."""
        if not self._member:
            self._synchronized = True
            return
        if self._synchronized:
            warnings.warn("synchronize() called twice before step(); the gradients were exchanged once")
            return
        for p in self._delay:
            if p not in self._pending:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                self._pending[p] = self._start(p)
        self._finish()
        self._delay = dict.fromkeys(self._delay, self.backward_passes_per_step)
        self._synchronized = True
        self.exchange.collect()
        try:
            self.step_skipped = self.exchange.end_step()
        except FloatingPointError:      # "stop": the exchange rolled back, so do the buffers; the step is over
            self._synchronized = False
            if self._buffers is not None:
                self._buffers.end_step(True)
            raise
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
        tensors whose momentum the memory applied. Outside the process set: the wrapped optimizer's step on
        the local gradients (Horovod's rule)."""
        if not self._member:
            self._synchronized = False
            return unhooked(self._base_class.step)(self, closure)
        if (closure is None and self._steps == 0 and not self._synchronized and not self._pending
                and all(d == self.backward_passes_per_step for d in self._delay.values())):
            return self._initialize_state()
        if self._should_synchronize:
            if self._synchronized:
                warnings.warn("optimizer.step() called without optimizer.skip_synchronize() context after "
                              "optimizer.synchronize(); the gradients were exchanged once, not twice")
            else:
                self.synchronize()
        self._synchronized = False
        self._steps += 1
        if self.step_skipped:
            return None
        return step_corrected(self, unhooked(self._base_class.step), self.exchange.corrected, closure)

    def _initialize_state(self):
        """A first step before any backward: what ``hvd.broadcast_optimizer_state`` does to give a fresh
        optimizer its state (zero gradients, ``step()``) before it receives the root's. The wrapped optimizer
        steps locally, so its state exists as on a rank that trained, but nothing is exchanged and no
        parameter moves (weight decay on zero gradients would move them)."""
        trained = [p for p in self._delay if p.grad is not None]
        with torch.no_grad():
            saved = [p.detach().clone() for p in trained]
        try:
            step_corrected(self, unhooked(self._base_class.step), self.exchange.corrected)
        finally:
            with torch.no_grad():
                for p, value in zip(trained, saved):
                    p.copy_(value)

    def zero_grad(self, set_to_none=True):
        """Clear gradients; also drops passes accumulated towards an unfinished ``backward_passes_per_step``."""
        if self._pending:
            raise AssertionError("DistributedOptimizer: zero_grad() while gradient exchanges are in flight; "
                                 "call step() or synchronize() first")
        self._delay = dict.fromkeys(self._delay, self.backward_passes_per_step)
        return self._base_class.zero_grad(self, set_to_none)

    def load_state_dict(self, state_dict):
        """Load the wrapped optimizer's state; exchanges in flight are finished and their averages dropped
        (with ``nonfinite`` set the memory and compressor go back to the step's start; without it that step's
        gradient stays in the residuals), counters reset, and a momentum-correcting memory follows the loaded
        momentum (weight decay is read live anyway)."""
        if self._pending:
            self._finish()
            self.exchange.stats = self.exchange.zero_stats()
            self.exchange.rollback()
        if self._buffers is not None:
            self._buffers.end_step(False)
        self._base_class.load_state_dict(self, state_dict)
        self._reset_counters()
        self.exchange.follow_optimizer()


def _horovod_arguments(compression, dense_compression, op, gradient_predivide_factor, num_groups, groups,
                       params):
    """Horovod's own arguments, taken with Horovod's meaning or refused by name (ValueError) before training;
    returns ``(compression, dense_compression)`` with Horovod's ``Compression.none``/``fp16`` mapped to the
    dense exchange in fp32/fp16 (for every tensor, as Horovod casts every floating gradient)."""
    if compression is hvd.Compression.none:
        compression = None
    elif compression is hvd.Compression.fp16:
        if dense_compression is not None:
            raise ValueError("DistributedOptimizer: compression=hvd.Compression.fp16 sends every tensor in fp16; "
                             f"dense_compression={dense_compression!r} would contradict it, drop one")
        compression, dense_compression = None, FP16Compressor()
    elif isinstance(compression, HorovodCompressor) or (isinstance(compression, type)
                                                        and issubclass(compression, HorovodCompressor)):
        raise ValueError(f"DistributedOptimizer: compression={compression!r} is a Horovod compressor; dgc takes "
                         "hvd.Compression.none, hvd.Compression.fp16 or a dgc compressor (dgc.compressors)")
    if op not in (hvd.Average, hvd.Sum):
        raise ValueError(f"DistributedOptimizer: op={_OP_NAMES.get(op, repr(op))} is not supported by dgc; the "
                         "exchange averages (op=hvd.Average, the default) or sums (op=hvd.Sum) gradients")
    if isinstance(gradient_predivide_factor, bool) or not (
            isinstance(gradient_predivide_factor, numbers.Real) and gradient_predivide_factor > 0):
        raise ValueError(f"DistributedOptimizer: gradient_predivide_factor={gradient_predivide_factor!r} must be "
                         "a number > 0")
    if gradient_predivide_factor != 1.0 and op != hvd.Average:
        raise ValueError(f"DistributedOptimizer: gradient_predivide_factor={gradient_predivide_factor!r} needs "
                         f"op=hvd.Average (Horovod's rule), not op={_OP_NAMES[op]}")
    if num_groups:
        warnings.warn("DistributedOptimizer: num_groups is Horovod's deprecated spelling of groups", DeprecationWarning)
        groups = num_groups if groups is None else groups
    if groups is None:
        return compression, dense_compression
    if isinstance(groups, list):
        members = [p for group in groups for p in (group if isinstance(group, (list, tuple)) else [None])]
        known = {id(p) for p in params}
        strangers = [i for i, p in enumerate(members) if not isinstance(p, torch.Tensor) or id(p) not in known]
        if strangers:
            raise ValueError(f"DistributedOptimizer: groups member {strangers[0]} (counted over all groups) is "
                             f"{type(members[strangers[0]]).__name__}, not one of the optimizer's parameters; "
                             "groups must be a list of lists of them")
        seen = set()
        for i, p in enumerate(members):
            if id(p) in seen:
                raise ValueError(f"DistributedOptimizer: groups member {i} (counted over all groups, shape "
                                 f"{tuple(p.shape)}) appears in more than one group")
            seen.add(id(p))
    elif isinstance(groups, bool) or not (isinstance(groups, int) and groups > 0):
        raise ValueError(f"DistributedOptimizer: groups={groups!r}; expected an int > 0 or a list of lists of "
                         "parameters")
    return compression, dense_compression


def DistributedOptimizer(optimizer, named_parameters=None, compression=None, backward_passes_per_step=1,
                         op=hvd.Average, gradient_predivide_factor=1.0, num_groups=0, groups=None,
                         sparse_as_dense=False, process_set=hvd.global_process_set, *, communicator=None,
                         memory=None, dense_compression=None, hierarchical=False, nonfinite="skip",
                         loss_scale=None, model=None):
    """Make ``optimizer`` average its gradients over all workers through ``compression`` (default: dense
    allreduce) and ``memory`` (default: ``compression.memory`` if it has one, else none); tensors too small
    to compress go through ``dense_compression`` (default: dense fp32; e.g. ``FP16Compressor()``).

    Horovod's arguments, in Horovod's order and with Horovod's meaning: ``compression`` also takes
    ``hvd.Compression.none`` (dense fp32) and ``hvd.Compression.fp16`` (every tensor dense in fp16);
    ``op``: ``hvd.Average`` or ``hvd.Sum`` (the average times the process set's size; Adasum, Min, Max,
    Product are refused); ``gradient_predivide_factor`` (Horovod splits the average's division around the
    sum; the average is the same, and 16-bit payloads are divided before the sum anyway); ``groups`` /
    ``num_groups`` (Horovod's fusion grouping: checked, no effect on the averages; dgc's own fusion is
    :class:`dgc.fused.FusedCommunicator`); ``sparse_as_dense`` (sparse gradients densified for the
    exchange, sparse again for the update; otherwise they travel as indices and values by allgather, on dense
    routes of a flat exchange); ``process_set``: exchange within it; ranks outside neither hook nor exchange
    and step on their own gradients. ``set_backward_passes_per_step()`` and ``hvd.broadcast_optimizer_state``
    work as with Horovod's optimizer (a fresh optimizer's state is created by a local step that moves no
    parameter).

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
    if nonfinite not in ("skip", "stop"):
        raise ValueError(f"DistributedOptimizer: nonfinite={nonfinite!r}; expected 'stop' (a non-finite gradient "
                         "on any rank raises FloatingPointError on every rank) or 'skip' (the step is skipped on "
                         "every rank); raising on one rank alone would leave the others waiting in collectives")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    compression, dense_compression = _horovod_arguments(compression, dense_compression, op,
                                                         gradient_predivide_factor, num_groups, groups, params)
    if not isinstance(process_set, hvd.ProcessSet):
        raise ValueError(f"DistributedOptimizer: process_set={process_set!r}; expected a horovod.torch ProcessSet")
    local = None
    custom = process_set is not hvd.global_process_set
    routes = [what for what, given in (("communicator", communicator is not None), ("process_set", custom),
                                       ("hierarchical", bool(hierarchical))) if given]
    if len(routes) > 1:
        raise ValueError(f"DistributedOptimizer: {' and '.join(routes)} were both given; give at most one of "
                         "communicator, process_set or hierarchical")
    if hierarchical:
        if hierarchical is True:
            hierarchical = hierarchical_communicators()
        if not (isinstance(hierarchical, tuple) and len(hierarchical) == 2 and hierarchical != (None, None)):
            raise ValueError(f"DistributedOptimizer: hierarchical={hierarchical!r}; expected True or a tuple "
                             "(leaders' communicator or None off the leaders, host's communicator or None with "
                             "one rank per host)")
        communicator, local = hierarchical
    elif communicator is None:
        communicator = HorovodCommunicator(process_set)
    base = optimizer.__class__
    cls = type(base.__name__, (_DistributedOptimizer, base), {"_base_class": base})
    scheduler_step = optimizer.__dict__.pop("step", None)
    optimizer.__class__ = cls
    cls.step = torch.optim.Optimizer.profile_hook_step(_DistributedOptimizer.step)
    cls.step.hooked = True
    if scheduler_step is not None:
        _count_steps_for_scheduler(optimizer, scheduler_step)
    sum_over = None             # op=hvd.Sum: the number of ranks the average is over
    if op == hvd.Sum:
        sum_over = process_set.size() if custom else hvd.size() if local is not None else communicator.size
    optimizer._setup(named_parameters, compression, memory, backward_passes_per_step, communicator,
                     dense_compression, local, nonfinite, loss_scale, process_set if custom else None, sum_over,
                     sparse_as_dense, model)
    return optimizer


def _buffer_snapshot(model, params):
    """The :class:`BufferSnapshot` of ``model`` (None without one), which must hold every optimized parameter."""
    if model is None:
        return None
    if isinstance(model, torch.nn.Module):
        held = set(model.parameters())
        outside = [i for i, p in enumerate(params) if p not in held]
        if outside:
            raise ValueError(f"DistributedOptimizer: model= ({type(model).__name__}) does not hold the optimizer's "
                             f"parameters at positions {outside[:5]}; pass the model being trained (whose buffers "
                             "a skipped step must restore)")
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
