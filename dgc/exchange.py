"""The per-tensor exchange every compressor and backend shares (GRACE's ``send_step``, without a compressor
that talks to the collective library).

    start:  prepare -> memory.compensate -> compressor.compress -> memory.update -> communicator.start
    finish: communicator.wait -> compressor.decompress (-> another round, for multi-round compressors)

Hierarchical (given a ``local`` communicator over the ranks of this host): the gradients are first averaged
densely over the fast local links; then only the host's leader (local rank 0) runs the pipeline above, over
``communicator`` joining the leaders of all hosts, and broadcasts the average to its host. The compressed
exchange so grows with hosts, not ranks (the reference DGC code's open TODO), and the other ranks of a host
hold no residuals (their memory stays empty).

Which tensors are compressed is decided here, once (:func:`is_compressible`); the rest go dense through the
base :class:`~dgc.compressors.Compressor` (or a given dense compressor, e.g. fp16) with no memory. Backends
(the Horovod ``DistributedOptimizer``, a DDP hook, the in-process communicator) only decide *when* to call
:meth:`Exchange.start` and :meth:`Exchange.finish`.
"""
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

import torch

from dgc.compressors.base import SUPPORTED_DTYPES, Compressor, Payload
from dgc.memory import Memory


def is_compressible(param, compressor):
    """Compress weight matrices and convolution kernels of at least ``compressor.min_compress_numel``
    elements; biases and BatchNorm (1-d) and small tensors go dense, as in the paper's experiments."""
    return (compressor.min_compress_numel is not None and param.dim() > 1
            and param.numel() >= compressor.min_compress_numel)


@dataclass
class _Route:
    """How one named parameter is exchanged."""
    name: str
    param: torch.Tensor
    compressor: Compressor
    memory: Memory
    group: int
    compressed: bool


@dataclass
class Pending:
    """An exchange in flight: the communicator's handle (hierarchical, from :meth:`Exchange.start`: the host
    communicator's, of the host's dense average), the compressor's context, where the average goes, and on a
    measured step the handle of the dense reference average."""
    route: _Route
    handle: Any
    ctx: Any
    out: torch.Tensor
    reference: Optional[Any] = None


class Exchange:
    """Exchanges the gradients of ``named_parameters`` (trained ones, same order and names on every rank).

    Compressible tensors keep what they did not send in ``memory`` (default: ``compressor.memory`` if it has
    one, else none); the others go through ``dense_compressor`` (default: dense fp32) without memory.
    ``optimizer`` (optional) supplies live hyper-parameters: weight decay is folded into a compressed
    gradient when the memory applies momentum (read from the parameter's group at every step), and such a
    memory follows the optimizer's momentum and Nesterov setting (:meth:`follow_optimizer`).
    ``stats`` accumulates bytes and values sent and compress/decompress seconds until :meth:`collect`.
    ``measure_error``: while True, every compressed tensor's compensated gradient also goes through a dense
    fp32 allreduce, so :meth:`collect` reports the relative L2 error and SNR of the decompressed average
    against the dense average of what was compressed (costly: set it on sampled steps, alike on every rank).
    ``local``: a communicator over this host's ranks, for the hierarchical exchange; then ``communicator``
    joins the hosts' leaders (local rank 0) and is None on the other ranks. Every host must have as many ranks.
    ``nonfinite``: None raises FloatingPointError at once where a compressed tensor's gradient has NaN/Inf
    (before it can enter a residual; hierarchical: on the host's leader, after the host's average; dense
    tensors are not checked, as with plain Horovod): for single-process use only, since the other ranks would
    wait in their collectives (the distributed optimizer and the DDP hook refuse it). "skip" or
    "stop" make steps transactions: a bad gradient is replaced by zeros, the step is finished alike on every
    rank, and :meth:`end_step` (once per step, on every rank) agrees over all ranks whether any had one;
    then every rank rolls back its memory (double-buffered: no copy) and compressor state (its state_dict,
    taken at the step's start: a shallow snapshot, as compressors replace their state tensors rather than
    change them in place) ("skip": the step never happened, its average must not be applied; counted in
    ``skipped_steps``) or raises FloatingPointError ("stop"). A step that counts is committed by
    :meth:`end_step`, or left open for the caller's :meth:`commit` (``end_step(commit=False)``).
    ``loss_scale``: a :class:`dgc.amp.LossScale` the loss was multiplied by (fp16 autocast): gradients are
    divided by it before anything else (an overflow is still seen, and skipped), and it is updated with
    every step's skip decision and checkpointed here; needs ``nonfinite``.
    """

    def __init__(self, named_parameters, communicator, compressor=None, memory=None, optimizer=None,
                 dense_compressor=None, local=None, nonfinite=None, loss_scale=None):
        if nonfinite not in (None, "skip", "stop"):
            raise ValueError(f"Exchange: nonfinite={nonfinite!r}; expected None (raise at once), 'skip' or 'stop'")
        if loss_scale is not None and nonfinite is None:
            raise ValueError("Exchange: a loss_scale needs nonfinite='skip' or 'stop' (overflow steps are normal "
                             "with fp16 loss scaling and must be skipped on every rank)")
        self.loss_scale = loss_scale
        if local is None and communicator is None:
            raise ValueError("Exchange: communicator=None; expected a communicator (e.g. "
                             "dgc.horovod.HorovodCommunicator(), dgc.torch.TorchCommunicator() or "
                             "dgc.inprocess.InProcessGroup(n).communicator(rank))")
        if local is not None and (local.rank == 0) != (communicator is not None):
            raise ValueError(f"Exchange: hierarchical rank {local.rank} of its host "
                             f"{'has no' if local.rank == 0 else 'has a'} leaders' communicator; the leader "
                             "(local rank 0) needs one, the other ranks none")
        self.local = local
        self.communicator = communicator
        self.nonfinite = nonfinite
        self.skipped_steps = 0
        self._finite = None
        """Whether every gradient this rank checked in the current step was finite: a 0-d bool tensor on their
        device (None before the step's first), read on the host once, by :meth:`end_step`'s flag."""
        self._checks = []
        """(name, 0-d bool tensor: finite) of every gradient checked in the current step; the names of the bad
        ones are read only for a step that turned out bad ("stop"'s message)."""
        self._snapshot = None
        """The compressor's state at the start of the current step (transactions only)."""
        self._flag = None
        """The handle of the current step's non-finite flag, once started."""
        self._kind = None
        """(name, collective, dtype, device) of the current step's payload whose name sorts first (the same
        on every rank, whatever order the gradients arrived in): the flag travels the same way, so a fused
        exchange packs it into a collective the step makes anyway."""
        self.compressor = compressor if compressor is not None else Compressor()
        if memory is None:      # the reference code's spelling: DGCCompressor(..., memory=DGCSGDMemory())
            memory = getattr(self.compressor, "memory", None) or Memory()
        self.memory = memory
        self.optimizer = optimizer
        group_of = {}
        if optimizer is not None:
            group_of = {p: i for i, group in enumerate(optimizer.param_groups) for p in group["params"]}
        dense = (dense_compressor if dense_compressor is not None else Compressor(), Memory())
        self.routes = {}
        for name, p in named_parameters:
            compressed = is_compressible(p, self.compressor)
            compressor, memory = (self.compressor, self.memory) if compressed else dense
            self.routes[name] = _Route(name, p, compressor, memory, group_of.get(p, -1), compressed)
        self.memory.initialize(communicator.size if communicator is not None else 1)
        self.compressor.initialize(communicator.size if communicator is not None else 1)
        self.memory.transactional = nonfinite is not None
        self.corrected = {r.param for r in self.routes.values() if r.compressed and self.memory.applies_momentum}
        """Parameters whose momentum and weight decay the memory applied: the optimizer steps them plainly."""
        self.follow_optimizer()
        self.measure_error = False
        self.stats = self.zero_stats()
        self.last_exchange = {}
        self.dense_bytes = sum(r.param.numel() * 4 for r in self.routes.values())
        self.dense_values = sum(r.param.numel() for r in self.routes.values())

    def start(self, name, grad, out=None):
        """Begin the exchange of parameter ``name``'s gradient; the average will be written into ``out``
        (default: ``grad`` itself). Hierarchical: begin the host's dense average (the rest runs in
        :meth:`finish`)."""
        route, out = self.routes[name], grad if out is None else out
        if self.nonfinite is not None and self._snapshot is None:
            self._snapshot = _containers_copied(self.compressor.state_dict())
        if self.local is not None:
            flat = grad.reshape(-1)     # averaged in place where grad is contiguous
            self.stats["local_bytes"] += flat.numel() * flat.element_size()
            return Pending(route, self.local.start(Payload(flat, "allreduce", flat.numel()), f"{name}.local"),
                           None, out)
        return self._compress(route, grad, out)

    def _compress(self, route, grad, out):
        """prepare -> memory.compensate -> compressor.compress -> memory.update -> communicator.start."""
        name = route.name
        flat, decay = self._prepare(route, grad)
        started = time.perf_counter()
        compensated = route.memory.compensate(flat, name, decay)
        reference = self._reference(route, compensated)
        payload, ctx = route.compressor.compress(compensated.view(route.param.shape), name)
        if route.memory.keeps_state and payload.tensor.data_ptr() == compensated.data_ptr():
            payload.tensor = payload.tensor.clone()
        if payload.sent is not None:
            route.memory.update(name, payload.sent)
        self.stats["compress_s"] += time.perf_counter() - started
        return self._send(route, payload, ctx, out, reference)

    def finish(self, pending, closes_step=True):
        """Wait for every exchange in ``pending`` (a list, from :meth:`start`), decompress, write the averages.
        ``closes_step``: these are the step's last exchanges (False for all but a DDP step's last bucket); then,
        with ``nonfinite`` set (flat exchange), the step's flag starts first, the way the step's payload whose
        name sorts first went, so a fused exchange carries it in a collective it makes anyway.

        In phases, each flushing a batching communicator (:mod:`dgc.fused`) once all its payloads are started,
        before any is awaited: the host's averages (hierarchical; the leader compresses each as it arrives,
        starting the first round between the hosts), the compressed rounds until none remain (a multi-round
        compressor's next payloads start as its round is decoded and leave together at the next round's
        flush), the broadcasts to the host (hierarchical; started once every round is done). So every rank of
        a host puts the same payloads into each fused collective: a leader still in PowerSGD's second round
        never sends part of the broadcasts that its host's other ranks send at once."""
        if self.nonfinite is not None and self.local is None and self._flag is None and closes_step:
            self._flag = self._start_flag()
        if self.local is None:
            self._rounds(pending)
            return
        _flush(self.local)
        exchanges = []
        for p in pending:
            average = self.local.wait(p.handle)
            if self.communicator is not None:      # the leader: compress each host average as it arrives
                exchanges.append(self._compress(p.route, average.view(p.out.shape), p.out))
        self._rounds(exchanges)
        broadcasts = [(p.out, self._broadcast(p.route, p.out)) for p in pending]
        _flush(self.local)
        for out, handle in broadcasts:
            result = self.local.wait(handle)
            if result.data_ptr() != out.data_ptr():
                out.copy_(result.reshape(out.shape))

    def _rounds(self, pending):
        """The compressed exchange of ``pending`` (between the hosts' leaders, hierarchical): round after
        round until every compressor has decoded its average into its ``out``."""
        while pending:
            _flush(self.communicator)
            next_round = []
            for p in pending:
                following = self._decode(p, self.communicator.wait(p.handle), self.communicator)
                if following is not None:
                    next_round.append(following)
                elif p.reference is not None:
                    self._measure(p.out, self.communicator.wait(p.reference))
            pending = next_round

    def _decode(self, p, result, communicator):
        """Decompress one exchange's ``result``: its average into ``p.out`` (returns None), or, for a multi-round
        compressor, its next round started on ``communicator`` (returns its :class:`Pending`)."""
        started = time.perf_counter()
        buffer = p.out.view(-1) if p.out.is_contiguous() else None
        decoded = p.route.compressor.decompress(result, p.ctx, buffer)
        self.stats["decompress_s"] += time.perf_counter() - started
        if isinstance(decoded, tuple):
            payload, ctx = decoded
            if payload.sent is not None:
                p.route.memory.update(p.route.name, payload.sent)
            return self._send(p.route, payload, ctx, p.out, p.reference, communicator)
        if decoded.data_ptr() != p.out.data_ptr():
            p.out.copy_(decoded.reshape(p.out.shape))
        return None

    def finish_future(self, pending, closes_step=True, after=None, lock=None, value=None):
        """:meth:`finish` without waiting (flat exchange; the communicator has ``future`` and ``twin``): return a
        torch.futures.Future that completes with ``value`` once every exchange in ``pending`` has decoded its
        average into its ``out``. ``closes_step``: the step's flag starts first, as in :meth:`finish`.

        Decoding runs in the communication's callbacks, holding ``lock`` (the caller holds it while it starts
        exchanges, so the statistics, memory and compressor state are never changed by two threads at once),
        and waits for ``after`` too (the previous call's future, or None). A multi-round compressor's later
        rounds start on ``communicator.twin()``, nowhere else. Ordering argument: the main communicator's
        collectives start only on the caller's thread, in its order; each batch of the twin's starts in the
        callback that follows the completion of the batch before it (this call's previous round, or ``after``,
        which completes only once the previous call's last round did), so the twin's collectives start in
        one sequence (call order, round order, ``pending``'s order), the same on every rank, whatever thread
        or moment the callbacks run at. Each callback ``wait``s its futures, so on CUDA its kernels follow
        the communication's stream, and the returned future records the stream the last decode ran on."""
        if self.local is not None:
            raise ValueError("Exchange.finish_future: the hierarchical exchange (local=...) finishes with finish()")
        lock = lock if lock is not None else threading.RLock()
        devices = [value.device] if isinstance(value, torch.Tensor) and value.device.type != "cpu" else None
        done = torch.futures.Future(devices=devices)
        with lock:
            if self.nonfinite is not None and self._flag is None and closes_step:
                self._flag = self._start_flag()
        twin, measured = self.communicator.twin(), {}
        references = [(p.route.name, self.communicator.future(p.reference)) for p in pending if p.reference is not None]

        def round_done(pending, gathered):
            try:
                results = [f.wait() for f in gathered.wait()]
                for name, future in references:       # all complete: they were in the first round's futures
                    measured[name] = future.wait()
                with lock:
                    next_round = []
                    for p, result in zip(pending, results):
                        following = self._decode(p, result, twin)
                        if following is not None:
                            next_round.append(following)
                        elif p.reference is not None:
                            self._measure(p.out, measured[p.route.name])
                if next_round:
                    start_round(twin, next_round, [])
                else:
                    done.set_result(value)
            except BaseException as error:      # the caller's future must complete, or DDP waits forever
                done.set_exception(error)

        def start_round(communicator, pending, extra):
            waits = [communicator.future(p.handle) for p in pending] + extra
            torch.futures.collect_all(waits).add_done_callback(lambda f: round_done(pending, f))

        start_round(self.communicator, pending, ([after] if after is not None else []) + [f for _, f in references])
        return done

    def _broadcast(self, route, out):
        """Start the leader's average (in ``out``) to the other ranks of its host; return the handle."""
        flat = out.reshape(-1) if out.is_contiguous() else out.contiguous().view(-1)
        self.stats["local_bytes"] += flat.numel() * flat.element_size()
        return self.local.start(Payload(flat, "broadcast", flat.numel()), f"{route.name}.host")

    def _reference(self, route, compensated):
        """On a measured step, start the dense fp32 average of a compressed tensor's ``compensated``
        gradient (copied before the memory changes it) and return its handle; else None."""
        if not (self.measure_error and route.compressed):
            return None
        dense = compensated.detach().to(torch.float32, copy=True)
        return self.communicator.start(Payload(dense, "allreduce", 0), f"{route.name}.reference")

    def _measure(self, average, reference):
        """Accumulate ||average - reference||^2 and ||reference||^2 (as tensors: no host sync until collect)."""
        reference = reference.reshape(-1).double()
        self.stats["error_sq"] += (average.reshape(-1).double() - reference).square().sum()
        self.stats["reference_sq"] += reference.square().sum()

    def _prepare(self, route, grad):
        """The flat gradient, checked (a bad value must never enter a residual), and the weight decay the
        memory folds in: where the memory applies momentum, the optimizer's live weight decay (its own then
        does not run), with its live momentum and Nesterov setting handed to the memory; else None."""
        flat = grad.reshape(-1)
        decay = None
        if route.compressed or self.nonfinite is not None:
            flat = self._checked(flat, route.name)
            if self.loss_scale is not None:
                flat = flat / self.loss_scale.value
        if route.compressed:
            if route.param in self.corrected and self.optimizer is not None:
                group = self.optimizer.param_groups[route.group]
                self.memory.follow(group["momentum"], group["nesterov"])
                if group.get("weight_decay", 0):
                    decay = (route.param.detach().reshape(-1), group["weight_decay"])
        return flat, decay

    def _checked(self, flat, name):
        """``flat`` (a flat gradient, or a sparse one's values) with its dtype checked (TypeError naming the
        parameter) and its finiteness decided without a host read: with ``nonfinite`` set it joins the step's
        device flag and a tensor with a NaN/Inf is zeroed in place (compressors see finite values; the step is
        rolled back on every rank, and ``flat`` is the gradient its average replaces); without,
        FloatingPointError at once (one host read per tensor: single-process use only)."""
        finite = _all_finite(flat, name)
        if self.nonfinite is None:
            if not finite:
                raise FloatingPointError(f"gradient of {name!r} has non-finite values (nan or inf); it was not "
                                         "accumulated into the residual")
            return flat
        self._checks.append((name, finite))
        self._finite = finite if self._finite is None else self._finite & finite.to(self._finite.device)
        return flat.masked_fill_(~finite, 0)

    def _bad_names(self, checks):
        """The names among ``checks`` (see ``_checks``) whose gradient was not finite (one host read)."""
        if not checks:
            return []
        finite = torch.stack([ok.to(checks[0][1].device) for _, ok in checks]).tolist()
        return [name for (name, _), ok in zip(checks, finite) if not ok]

    def _send(self, route, payload, ctx, out, reference=None, communicator=None):
        self.stats["bytes_sent"] += payload.tensor.numel() * payload.tensor.element_size()
        self.stats["values_sent"] += payload.num_values
        self.stats["collectives"] += 1
        if self._kind is None or route.name < self._kind[0]:
            self._kind = (route.name, payload.collective, payload.tensor.dtype, payload.tensor.device)
        return Pending(route, (communicator or self.communicator).start(payload, route.name), ctx, out, reference)

    def end_step(self, commit=True):
        """Close a step's exchange (``nonfinite`` set; call on every rank after :meth:`finish`): agree
        over all ranks whether any gradient was non-finite (one tiny collective, of the kind of the step's
        payload whose name sorts first; hierarchical: within the host, between leaders, back to the host),
        then :meth:`commit` (unless ``commit`` is False: the caller commits, or rolls back to redo the step's
        exchange), or roll the memory and compressor back and return True ("skip") or raise ("stop").
        Returns False for a step that counts (always, without ``nonfinite``: a bad gradient raised at once)."""
        if self.nonfinite is None:
            return False
        if self.local is not None:     # the leaders' flags are known only after finish: three tiny rounds
            flag = self.local.wait(self.local.start(Payload(self._flag_tensor(torch.float32), "allreduce", 0),
                                                    "dgc.nonfinite.local"))
            if self.communicator is not None:
                flag = self.communicator.wait(self.communicator.start(Payload(flag, "allreduce", 0), "dgc.nonfinite"))
            flag = self.local.wait(self.local.start(Payload(flag, "broadcast", 0), "dgc.nonfinite.host"))
        else:
            flag = self.communicator.wait(self._flag if self._flag is not None else self._start_flag())
        checks = self._checks
        self._finite, self._checks, self._flag, self._kind = None, [], None, None
        if not bool(flag.reshape(-1).ne(0).any()):         # the step's one host read of the non-finite decision
            if commit:
                self.commit()
            return False
        self.rollback()
        self.skipped_steps += 1
        if self.loss_scale is not None:
            self.loss_scale.update(True)
        if self.nonfinite == "stop":
            bad = self._bad_names(checks)
            mine = f"on this rank in {bad[:5]}" if bad else "on another rank"
            raise FloatingPointError(f"non-finite gradient (nan or inf) {mine}; every rank stopped (nonfinite="
                                     "'stop'); the memory holds the state before this step")
        return True

    def commit(self, unused=()):
        """Make the step's changes to the memory and compressor state stand (``nonfinite`` set), except for the
        parameters named in ``unused``, which go back to the step's start: they got no gradient this step (a
        branch no rank used), and torch's optimizers leave a parameter whose grad is None as it was."""
        if unused:
            unused = set(unused)
            self.memory.rollback(unused)
            if self._snapshot is not None:
                self.compressor.load_state_dict(_names_restored(self.compressor.state_dict(), self._snapshot, unused))
        self.memory.commit()
        self._snapshot = None
        if self.loss_scale is not None:
            self.loss_scale.update(False)

    def _flag_tensor(self, dtype, device=None):
        """1 where this rank saw a non-finite gradient this step, else 0, as one element of ``dtype`` on
        ``device`` (default: where the checked gradients are, else the parameters'; where the payloads are, as
        NCCL moves only GPU tensors): made from the device flag, or filled on the device, never copied from
        a host value (that copy would wait for the device)."""
        if self._finite is None:
            device = device if device is not None else next(iter(self.routes.values())).param.device
            return torch.zeros(1, dtype=dtype, device=device)
        device = device if device is not None else self._finite.device
        return (~self._finite).reshape(1).to(device=device, dtype=dtype, non_blocking=True)

    def _start_flag(self):
        """Start this rank's flag through the collective, dtype and device of the step's payload whose name
        sorts first (an average or a concatenation: either is nonzero where any rank's flag is)."""
        _, collective, dtype, device = self._kind or (None, "allreduce", torch.float32, None)
        flag = self._flag_tensor(dtype, device)
        self.stats["bytes_sent"] += flag.element_size()
        self.stats["control_bytes"] += flag.element_size()
        self.stats["collectives"] += 1
        return self.communicator.start(Payload(flag, collective, 0), "dgc.nonfinite")

    def rollback(self):
        """Drop the current step's changes to the memory and the compressor (back to the step's start: its
        exchanges must be finished); the step's flag, if started, is waited for and dropped."""
        self.memory.rollback()
        if self._flag is not None:
            self.communicator.wait(self._flag)
        if self._snapshot is not None:
            self.compressor.load_state_dict(self._snapshot)
        self._snapshot, self._finite, self._checks, self._flag, self._kind = None, None, [], None, None

    def follow_optimizer(self):
        """Make a momentum-correcting memory use the optimizer's momentum and Nesterov setting (§3.2); refuse
        an optimizer it cannot stand in for. Called at construction and after the optimizer's state is loaded."""
        if not self.corrected:
            return
        if self.optimizer is None:
            if self.memory.momentum is None:
                raise ValueError(f"{type(self.memory).__name__}: momentum is unset and no optimizer was given "
                                 "to take it from")
            return
        if not isinstance(self.optimizer, torch.optim.SGD):
            raise TypeError(f"{type(self.memory).__name__} applies SGD momentum before compression (momentum "
                            f"correction), so the optimizer must be torch.optim.SGD, not "
                            f"{type(self.optimizer).__name__}; use ResidualMemory with other optimizers")
        outside = [r.name for r in self.routes.values() if r.param in self.corrected and r.group < 0]
        if outside:
            raise ValueError(f"{type(self.memory).__name__}: parameters {outside[:5]} are compressed with momentum "
                             "correction but not in the optimizer, whose momentum and weight decay they need")
        groups = {r.group for r in self.routes.values() if r.param in self.corrected}
        settings = {(self.optimizer.param_groups[g]["momentum"], self.optimizer.param_groups[g]["nesterov"],
                     self.optimizer.param_groups[g]["dampening"]) for g in groups}
        if len(settings) > 1:
            raise ValueError(f"{type(self.memory).__name__}: compressed parameters sit in param groups with "
                             f"different (momentum, nesterov, dampening) {sorted(settings)}; momentum correction "
                             "needs one setting")
        momentum, nesterov, dampening = settings.pop()
        if dampening:
            raise ValueError(f"{type(self.memory).__name__}: the optimizer has dampening={dampening!r}; momentum "
                             "correction implements undampened momentum only")
        self.memory.follow(momentum, nesterov)

    def set_epoch(self, epoch):
        """Training progress in epochs, for compressors with a warm-up schedule."""
        self.compressor.set_epoch(epoch)

    def collect(self):
        """Close a step's statistics into ``last_exchange`` and return them: bytes and values sent, their
        ratio to dense fp32, payloads started (collectives before any fusion), compress and decompress
        seconds (host time), the bytes of those that were the step's non-finite flag (``control_bytes``,
        included in ``bytes_sent``), bytes sent over the host's own links (``local_bytes``, hierarchical only; the
        others are the exchange between hosts and 0 on ranks that are not a host's leader); on a measured step
        also
        ``relative_error`` (||average - dense average|| / ||dense average||, over the compressed tensors) and
        ``snr_db`` (10 log10 of the dense average's energy over the error's; None when the error is 0), else
        both None."""
        stats, self.stats = self.stats, self.zero_stats()
        error_sq, reference_sq = float(stats.pop("error_sq")), float(stats.pop("reference_sq"))
        measured = reference_sq > 0
        stats.update(dense_bytes=self.dense_bytes,
                     compression_ratio=stats["bytes_sent"] / max(self.dense_bytes, 1),
                     density=stats["values_sent"] / max(self.dense_values, 1),
                     relative_error=math.sqrt(error_sq / reference_sq) if measured else None,
                     snr_db=10 * math.log10(reference_sq / error_sq) if measured and error_sq > 0 else None)
        self.last_exchange = stats
        return stats

    @staticmethod
    def zero_stats():
        """Empty statistics (also what discards the counts of exchanges that are thrown away)."""
        return {"bytes_sent": 0, "values_sent": 0, "collectives": 0, "control_bytes": 0, "local_bytes": 0,
                "compress_s": 0.0, "decompress_s": 0.0, "error_sq": 0.0, "reference_sq": 0.0}

    def state_dict(self):
        """This rank's compressor and memory state (residuals differ per rank: checkpoint each rank's)."""
        state = {"compressor": self.compressor.state_dict(), "memory": self.memory.state_dict(),
                 "skipped_steps": self.skipped_steps}
        if self.loss_scale is not None:
            state["loss_scale"] = self.loss_scale.state_dict()
        return state

    def load_state_dict(self, state):
        """Restore :meth:`state_dict`'s ``state``; its per-tensor entries (residuals, momenta, PowerSGD's Q) go
        to the device of the parameter they belong to (a checkpoint loads on the CPU and resumes anywhere)."""
        devices = {name: route.param.device for name, route in self.routes.items()}
        self.compressor.load_state_dict(_on_parameter_devices(state["compressor"], devices))
        self.memory.load_state_dict(_on_parameter_devices(state["memory"], devices))
        self.skipped_steps = state.get("skipped_steps", 0)
        if self.loss_scale is not None and "loss_scale" in state:
            self.loss_scale.load_state_dict(state["loss_scale"])


class DenseStats:
    """The statistics side of :class:`dgc.exchange.Exchange` for a backend's own exchange (Horovod's
    ``hvd.DistributedOptimizer``, DDP's allreduce: the baselines users trust), so a training loop reads all
    the same way: every step sends every trained gradient densely as fp32; or, given torch's ``powersgd``
    hook state, what that hook sends by its own rule (estimated: rank x (n + m) values for each matrix it
    compresses, the rest dense)."""

    def __init__(self, named_parameters, powersgd=None):
        params = [p for _, p in named_parameters if p.requires_grad]
        numel = sum(p.numel() for p in params)
        values = numel
        if powersgd is not None:
            values = sum(_powersgd_values(p, powersgd.matrix_approximation_rank, powersgd.min_compression_rate)
                         for p in params)
        self.measure_error = False
        self.skipped_steps = 0
        """The backends' own optimizers skip no step (a non-finite gradient reaches the weights)."""
        self.last_exchange = {"bytes_sent": 4 * values, "values_sent": values, "compress_s": 0.0,
                              "decompress_s": 0.0, "dense_bytes": 4 * numel, "compression_ratio": values / numel,
                              "density": values / numel, "relative_error": None, "snr_db": None}

    def set_epoch(self, epoch):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def _powersgd_values(p, rank, min_rate):
    """Values torch's powerSGD_hook sends for ``p`` once it compresses: P and Q (rank x (n + m)) where that
    compresses by more than ``min_rate`` (its ``_should_compress``), else the tensor itself."""
    if p.dim() < 2:
        return p.numel()
    n, m = p.shape[0], p.numel() // p.shape[0]
    rank = min(n, m, rank)
    return (n + m) * rank if n * m > min_rate * (n + m) * rank else n * m


def _flush(communicator):
    """End a phase of :meth:`Exchange.finish`: a communicator that holds payloads back to batch them
    (:class:`dgc.fused.FusedCommunicator`'s ``flush``) sends them now; others have started theirs already."""
    flush = getattr(communicator, "flush", None)
    if flush is not None:
        flush()


def _containers_copied(state):
    """``state`` with its dicts and lists copied and everything else shared: a compressor's state_dict, kept as
    the step's snapshot at no model-size copy (compressors replace their state tensors, never change them)."""
    if isinstance(state, dict):
        return {key: _containers_copied(value) for key, value in state.items()}
    if type(state) in (list, tuple):
        return type(state)(_containers_copied(value) for value in state)
    return state


def _on_parameter_devices(state, devices):
    """``state`` (a compressor's or memory's state_dict) with every tensor kept under a parameter's name (a
    key of ``devices``, at any depth) on that parameter's device; other entries as they are."""
    if isinstance(state, dict):
        return {key: value.to(devices[key]) if isinstance(value, torch.Tensor) and key in devices
                else _on_parameter_devices(value, devices) for key, value in state.items()}
    if type(state) in (list, tuple):
        return type(state)(_on_parameter_devices(value, devices) for value in state)
    return state


def _names_restored(state, snapshot, names):
    """``state`` (a compressor's state_dict) with the entries of ``names`` put back as in ``snapshot`` (or
    dropped where the snapshot has none) in every dict that holds no dict: the per-tensor ones (e.g.
    ``{"q": {"fc.weight": Q}}``'s inner dict)."""
    if not isinstance(state, dict):
        return state
    before = snapshot if isinstance(snapshot, dict) else {}
    if not any(isinstance(v, dict) for v in state.values()):
        restored = {key: value for key, value in state.items() if key not in names}
        restored.update((name, before[name]) for name in names if name in before)
        return restored
    return {key: _names_restored(value, before.get(key), names) for key, value in state.items()}


def _all_finite(flat, name):
    """Reject an unsupported dtype, naming the parameter; return whether every value is finite, as a 0-d bool
    tensor on ``flat``'s device (one reduction, no host read: a sum is finite unless a value is not, or the
    values are so large that it overflows, which such a gradient should not pass either)."""
    if flat.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"gradient of {name!r} has dtype {flat.dtype}; supported: "
                        f"{', '.join(str(d) for d in SUPPORTED_DTYPES)}")
    total = flat.sum(dtype=torch.float32) if flat.element_size() < 4 else flat.sum()
    return torch.isfinite(total)
