"""DGC and the rest of the compressor family as a DistributedDataParallel communication hook.

    state = DGCHook(ddp_model, optimizer, compression=DGCCompressor(0.001), memory=DGCSGDMemory())
    ddp_model.register_comm_hook(state, dgc_hook)
    ...  loss.backward(); state.step(optimizer); optimizer.zero_grad()

DDP hands the hook flat buckets of gradients; the hook maps each bucket back to its parameters
(``bucket.parameters()`` / ``bucket.gradients()``, views into the bucket) and runs the exchange per parameter,
so a bucket's tensors are compressed exactly as under Horovod (the same routing, residuals keyed by
parameter name, the same checkpoints): compressing a whole bucket instead would select across unrelated
layers and tie the residuals to DDP's bucket layout, which changes with ``bucket_cap_mb``.

The hook overlaps as DDP's own allreduce does: it compresses a bucket and starts its collectives on the
backward pass's thread, and returns a future chained on their completion (``work.get_future()``), which
decodes the average into the bucket; meanwhile the backward pass computes the next buckets. A multi-round
compressor's later rounds (PowerSGD's Q) start from those callbacks on a second process group, in bucket
order (:meth:`dgc.exchange.Exchange.finish_future` gives the argument why every rank starts them alike).
With the fused exchange each bucket's payloads leave together, one fused collective per kind and bucket.
Overlap needs several buckets (DDP's ``bucket_cap_mb``; its first bucket holds at most 1 MB). ``overlap=False``
(or a communicator without ``future`` and ``twin``) runs each bucket's exchange to the end inside the hook and
returns a completed future; both give the same bits (tests/mp/ddp_checks.py).

A step is one transaction, closed by ``state.step(optimizer)``: further synced backward passes before it
(gradient accumulation without ``no_sync()``) redo the step's exchange from its start with the accumulated
local gradient, and a parameter left without a gradient (a branch no rank used) keeps its memory as it was.
"""
import threading

import torch

from dgc.buffers import BufferSnapshot
from dgc.exchange import Exchange
from dgc.optim import step_corrected
from dgc.torch.communicator import TorchCommunicator


class DGCHook:
    """The hook's state: the :class:`~dgc.exchange.Exchange` over ``model``'s trained parameters (named as in
    ``model.module.named_parameters()``), its statistics (``last_exchange``), whether the step was skipped
    for a non-finite gradient on some rank, and its checkpointable state (each rank's residuals).

    A step's memory and compressor changes wait for :meth:`step`. At a second synced backward pass before
    it (accumulation without ``no_sync()``; DDP then hands the hook the parameter's whole ``.grad``, which
    holds the first pass's average) the exchange is rolled back and redone with the local gradient of all
    the step's passes: kept for the compressed tensors (a copy of each per pass; the gradients of later
    passes are added to it by a tensor hook), while the dense ones are averaged as DDP averages them (an
    average's average is itself; with a ``loss_scale`` that is refused: the average is unscaled, the new
    pass's gradient not, so accumulate under ``no_sync()``). A compressed parameter this rank did not use
    in the step (``find_unused_parameters=True``) gets the exchange's average in its ``.grad`` at :meth:`step`
    if it has one (DDP leaves a globally unused parameter's ``.grad`` as it was, so torch SGD would step
    it with zeros while the memory already applied momentum and sent), and keeps its memory as it was if its
    ``.grad`` is None (as torch SGD leaves it). ``nonfinite`` must be "skip" or "stop" (None would raise on
    one rank while the others wait in the exchange).
    ``model.module``'s buffers are copied before each step's first forward (after DDP's buffer broadcast) and
    put back by :meth:`step` when the step was skipped (:class:`dgc.buffers.BufferSnapshot`).

    A pass's end (its statistics into ``last_exchange``, the agreement whether any rank had a non-finite
    gradient: ``step_skipped``, or "stop"'s FloatingPointError) comes once every bucket is done: at
    :meth:`step`, or at the next synced pass's first bucket (DDP waited for every bucket's future before
    either). ``overlap``: start each bucket's exchange and return a future of it (needs the communicator's
    ``future`` and ``twin``; the twin, a second process group for later rounds, is made here, so every rank
    must construct the hook alike); False: finish it inside the hook."""

    def __init__(self, model, optimizer, compression=None, memory=None, communicator=None, dense_compression=None,
                 nonfinite="skip", loss_scale=None, overlap=True):
        if nonfinite not in ("skip", "stop"):
            raise ValueError(f"DGCHook: nonfinite={nonfinite!r}; use 'skip' or 'stop' (None raises on the rank "
                             "with the non-finite gradient while the other ranks wait in the exchange)")
        module = getattr(model, "module", model)
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.exchange = Exchange(named, communicator or TorchCommunicator(), compression, memory, optimizer=optimizer,
                                 dense_compressor=dense_compression, nonfinite=nonfinite, loss_scale=loss_scale)
        self.name_of = {p: n for n, p in named}
        communicator = self.exchange.communicator
        self.overlap = overlap and hasattr(communicator, "future") and hasattr(communicator, "twin")
        if self.overlap:
            communicator.twin()     # a collective call: here, alike on every rank, never inside a pass
        self._lock = threading.RLock()
        """Held while the backward pass starts a bucket's exchanges and while a callback decodes one."""
        self._last = None
        """The future of the current pass's latest bucket (the next bucket's exchange decodes after it)."""
        self._unagreed = False
        """A pass was exchanged whose end (statistics, non-finite agreement) is still to come."""
        self.buffers = BufferSnapshot(module)
        self.step_skipped = False
        self._passes = 0
        """Synced backward passes exchanged in the current step (0 once :meth:`step` closed it)."""
        self._in_pass = False
        self._local = {}
        """Compressed parameter name -> the local gradient of the step's passes so far."""
        self._views = {}
        """Compressed parameter name -> its view into DDP's bucket, which holds the step's average."""
        self._used = set()
        """Compressed parameters whose gradient this rank computed in the current step."""
        for name, route in self.exchange.routes.items():
            if route.compressed:
                route.param.register_hook(lambda grad, name=name: self._accumulate(name, grad))
        if optimizer is not None:
            optimizer.register_step_pre_hook(self._refuse_plain_step)

    @property
    def last_exchange(self):
        return self.exchange.last_exchange

    def step(self, optimizer):
        """Close the step: nothing when it was skipped on every rank (but the model's buffers put back as they
        were before its first forward), else commit the memory and compressor changes (except for parameters
        whose ``.grad`` is None: no rank used them) and run the wrapped optimizer's update, with a plain
        ``p -= lr * grad`` for the tensors whose momentum and weight decay the memory applied (momentum
        correction). A step without a synced backward pass is never a skipped one."""
        self._end_pass()
        passes, views, used = self._close()
        if not passes:
            self.step_skipped = False
        self.buffers.end_step(self.step_skipped)
        if self.step_skipped:
            return
        if passes:
            for name, view in views.items():
                grad = self.exchange.routes[name].param.grad
                if name not in used and grad is not None:
                    grad.copy_(view.view_as(grad))
            self.exchange.commit(unused=[n for p, n in self.name_of.items() if p.grad is None])
        step_corrected(optimizer, lambda opt: opt.step(), self.exchange.corrected)   # as wrapped (lr schedulers)

    def exchange_bucket(self, bucket):
        """Start (``overlap``; else run) the exchange of ``bucket``'s gradients, the averages written into it,
        and return the future of the bucket; a further synced pass of a step first ends the pass before, then
        rolls the step back and exchanges the accumulated local gradients instead; a pass of a step already
        skipped exchanges nothing (every rank knows it was skipped)."""
        exchange, redo = self.exchange, self._passes > 0
        if redo and not self._in_pass:
            self._end_pass()
        if redo and self.step_skipped:
            return self._bucket_done(bucket, _completed(bucket.buffer()))
        if redo and not self._in_pass:
            if exchange.loss_scale is not None:
                raise RuntimeError("DGCHook: a second synced backward pass before state.step() with a loss_scale: "
                                   "DDP hands the hook the first pass's unscaled average plus the new pass's scaled "
                                   "gradient; accumulate the step's earlier passes under ddp.no_sync()")
            exchange.rollback()
        self._in_pass = True
        with self._lock:
            pending = []
            for p, grad in zip(bucket.parameters(), bucket.gradients()):
                name = self.name_of[p]
                if exchange.routes[name].compressed:
                    if redo:
                        grad.copy_(self._local[name])
                    else:
                        self._keep_local(name, grad)
                    self._views[name] = grad
                pending.append(exchange.start(name, grad))
            if self.overlap:
                future = exchange.finish_future(pending, closes_step=bucket.is_last(), after=self._last,
                                                lock=self._lock, value=bucket.buffer())
            else:
                exchange.finish(pending, closes_step=bucket.is_last())
                future = _completed(bucket.buffer())
        self._unagreed = True
        return self._bucket_done(bucket, future)

    def _bucket_done(self, bucket, future):
        """Note the bucket's future; after the pass's last bucket the pass is over (its end comes later)."""
        self._last = future
        if bucket.is_last():
            self._in_pass = False
            self._passes += 1
            self._last = None
        return future

    def _end_pass(self):
        """End an exchanged pass once every bucket is done: close its statistics and agree whether to skip
        the step (on every rank: one tiny collective)."""
        if not self._unagreed:
            return
        self._unagreed = False
        self.exchange.collect()
        try:
            self.step_skipped = self.exchange.end_step(commit=False)
        except FloatingPointError:      # "stop": rolled back; the buffers too, and the step is over
            self._close()
            self.buffers.end_step(True)
            raise

    def _close(self):
        """End the step's bookkeeping; return its synced passes, bucket views and the parameters this rank used."""
        closed = self._passes, self._views, self._used
        self._passes, self._views, self._used = 0, {}, set()
        return closed

    def _keep_local(self, name, grad):
        kept = self._local.get(name)
        if kept is None or kept.shape != grad.shape or kept.dtype != grad.dtype or kept.device != grad.device:
            kept = self._local[name] = torch.empty_like(grad)
        kept.copy_(grad)

    def _accumulate(self, name, grad):
        """A parameter's tensor hook: this rank used it in the step; after a pass was exchanged, add the new
        local gradient to the kept one."""
        self._used.add(name)
        if self._passes and name in self._local:
            self._local[name].add_(grad.reshape(self._local[name].shape))

    def _refuse_plain_step(self, optimizer, args, kwargs):
        """The optimizer's step pre-hook: a step outside :meth:`step` would leave the exchange open."""
        if self._passes:
            raise RuntimeError("DGCHook: optimizer.step() was called directly after a backward pass through "
                               "dgc_hook; call state.step(optimizer), which closes the step's exchange (commits "
                               "the residuals) and applies momentum correction's plain step")

    def state_dict(self):
        return self.exchange.state_dict()

    def load_state_dict(self, state):
        self.exchange.load_state_dict(state)


def dgc_hook(state, bucket):
    """Exchange every gradient of ``bucket`` through ``state`` (:meth:`DGCHook.exchange_bucket`); return the
    future DDP waits for before it hands the gradients to the optimizer."""
    return state.exchange_bucket(bucket)


def _completed(value):
    future = torch.futures.Future()
    future.set_result(value)
    return future
