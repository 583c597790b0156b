"""A model's buffers as they were when a step began, put back when the step is skipped.

A skipped step must be as if its batch had been left out, but by the time every rank agrees to skip, the
forward pass has already moved BatchNorm's running statistics and ``num_batches_tracked`` (a NaN input leaves
them NaN). Parameters, optimizer state, residuals and compressor state roll back in the exchange; the buffers
roll back here. Both backends use it: :func:`dgc.horovod.DistributedOptimizer` (``model=``) and
:class:`dgc.torch.DGCHook` (on ``ddp.module``, so the snapshot is taken after DDP's buffer broadcast).
"""
import torch


class BufferSnapshot:
    """Copies every buffer of ``module`` (floating, integer and bool) at the step's first forward with
    gradients enabled (a forward pre-hook; later forwards of the same step, e.g. accumulated passes, keep
    it), and :meth:`end_step` puts them back when the step was skipped and releases the copy. Forwards under
    ``torch.no_grad()`` (evaluation, BatchNorm recalibration) belong to no step and take no snapshot."""

    def __init__(self, module):
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"BufferSnapshot: model={module!r} must be a torch.nn.Module (the model whose "
                            "buffers, e.g. BatchNorm's running statistics, a skipped step must restore)")
        self.module = module
        self._saved = None
        self._handle = module.register_forward_pre_hook(self._before_forward)

    def _before_forward(self, module, args):
        if self._saved is None and torch.is_grad_enabled():
            self._saved = [(b, b.detach().clone()) for b in module.buffers()]

    @torch.no_grad()
    def end_step(self, skipped):
        """The step is over: if it was ``skipped``, every buffer gets back its value from before the step's
        first forward; the snapshot is released either way (the next step's first forward takes a new one)."""
        if skipped and self._saved is not None:
            for buffer, saved in self._saved:
                buffer.copy_(saved)
        self._saved = None
