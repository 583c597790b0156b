"""The optimizer step that pairs with momentum correction (Lin et al. 2018, §3.2)."""
import torch


def unhooked(step):
    """The step function under torch's step-hook wrapper, so that an outer step runs the hooks only once."""
    return step.__wrapped__ if getattr(step, "hooked", False) else step


def step_corrected(optimizer, inner_step, corrected, closure=None):
    """Run ``inner_step(optimizer)`` (the wrapped optimizer's own update) for every parameter except those
    in ``corrected``, which take the plain step ``p -= lr * grad``: their momentum and weight decay were
    applied by the memory before compression, so the averaged gradient is already the update direction."""
    loss = None
    if closure is not None:
        with torch.enable_grad():
            loss = closure()
    stashed = [(p, p.grad) for group in optimizer.param_groups for p in group["params"]
               if p in corrected and p.grad is not None]
    for p, _ in stashed:
        p.grad = None
    try:
        inner_step(optimizer)
    finally:
        for p, grad in stashed:
            p.grad = grad
    with torch.no_grad():
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p in corrected and p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])
    return loss


class DGCSGD(torch.optim.SGD):
    """SGD whose ``compressed_params`` take the plain step of :func:`step_corrected`; empty, it is torch SGD.

    Kept for the reference implementation's API and for loops that exchange gradients themselves (the
    distributed optimizers apply the plain step to the tensors they compress with momentum correction,
    so they accept plain ``torch.optim.SGD`` too)."""

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov)
        self.compressed_params = set()

    def step(self, closure=None):
        return step_corrected(self, unhooked(torch.optim.SGD.step), self.compressed_params, closure)
