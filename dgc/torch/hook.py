"""DGC and the rest of the compressor family as a DistributedDataParallel communication hook.

    state = DGCHook(ddp_model, optimizer, compression=DGCCompressor(0.001), memory=DGCSGDMemory())
    ddp_model.register_comm_hook(state, dgc_hook)
    ...  loss.backward(); state.step(optimizer); optimizer.zero_grad()

DDP hands the hook flat buckets of gradients; the hook maps each bucket back to its parameters
(``bucket.parameters()`` / ``bucket.gradients()``, views into the bucket) and runs the exchange per parameter,
so a bucket's tensors are compressed exactly as under Horovod (the same routing, residuals keyed by
parameter name, the same checkpoints): compressing a whole bucket instead would select across unrelated
layers and tie the residuals to DDP's bucket layout, which changes with ``bucket_cap_mb``. The hook runs a
bucket's exchange to the end and returns a completed future: the backward pass waits for each bucket's
exchange (with the fused exchange the collectives of a bucket travel together).
"""
import torch

from dgc.buffers import BufferSnapshot
from dgc.exchange import Exchange
from dgc.optim import step_corrected
from dgc.torch.communicator import TorchCommunicator


class DGCHook:
    """The hook's state: the :class:`~dgc.exchange.Exchange` over ``model``'s trained parameters (named as in
    ``model.module.named_parameters()``), its statistics (``last_exchange``), whether the last step was
    skipped for a non-finite gradient on some rank, and its checkpointable state (each rank's residuals).
    ``model.module``'s buffers are copied before each step's first forward (after DDP's buffer broadcast) and
    put back by :meth:`step` when the step was skipped (:class:`dgc.buffers.BufferSnapshot`)."""

    def __init__(self, model, optimizer, compression=None, memory=None, communicator=None, dense_compression=None,
                 nonfinite="skip", loss_scale=None):
        module = getattr(model, "module", model)
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.exchange = Exchange(named, communicator or TorchCommunicator(), compression, memory, optimizer=optimizer,
                                 dense_compressor=dense_compression, nonfinite=nonfinite, loss_scale=loss_scale)
        self.name_of = {p: n for n, p in named}
        self.buffers = BufferSnapshot(module)
        self.step_skipped = False

    @property
    def last_exchange(self):
        return self.exchange.last_exchange

    def step(self, optimizer):
        """The optimizer's step after a backward through the hook: nothing when the step was skipped on
        every rank (but the model's buffers put back as they were before its first forward), else the wrapped
        optimizer's update, with a plain ``p -= lr * grad`` for the tensors whose momentum and weight decay the
        memory applied (momentum correction)."""
        self.buffers.end_step(self.step_skipped)
        if self.step_skipped:
            return
        step_corrected(optimizer, lambda opt: opt.step(), self.exchange.corrected)   # as wrapped (lr schedulers)

    def state_dict(self):
        return self.exchange.state_dict()

    def load_state_dict(self, state):
        self.exchange.load_state_dict(state)


def dgc_hook(state, bucket):
    """Exchange every gradient of ``bucket`` through ``state.exchange`` (averages written into the bucket);
    after the last bucket of a step, close the step (statistics, the agreed non-finite decision)."""
    exchange = state.exchange
    pending = [exchange.start(state.name_of[p], g) for p, g in zip(bucket.parameters(), bucket.gradients())]
    exchange.finish(pending, closes_step=bucket.is_last())
    if bucket.is_last():
        exchange.collect()
        state.step_skipped = exchange.end_step()
    future = torch.futures.Future()
    future.set_result(bucket.buffer())
    return future
