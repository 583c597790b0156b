"""The SGD that pairs with DGCSGDMemory."""
import torch


class DGCSGD(torch.optim.SGD):
    """Momentum SGD in which DGC-compressed parameters take a plain step ``p -= lr * grad``.

    For those parameters weight decay was folded into the gradient and momentum applied inside
    :class:`dgc.memory.DGCSGDMemory` before compression (Lin et al. 2018, §3.2, momentum correction), so
    the averaged gradient that arrives is already the update direction. Every other parameter (dense
    biases, BatchNorm, small tensors) gets torch's own SGD with momentum, Nesterov and weight decay.
    ``compressed_params`` is filled by :func:`dgc.horovod.DistributedOptimizer`; empty, this is torch SGD.
    """

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov)
        self.compressed_params = set()

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        stashed = [p for group in self.param_groups for p in group["params"]
                   if p in self.compressed_params and p.grad is not None]
        grads = [p.grad for p in stashed]
        for p in stashed:
            p.grad = None
        try:
            super().step()
        finally:
            for p, grad in zip(stashed, grads):
                p.grad = grad
        for group in self.param_groups:
            for p in group["params"]:
                if p in self.compressed_params and p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])
        return loss
