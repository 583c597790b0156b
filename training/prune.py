"""Gradual magnitude pruning during training (Zhu & Gupta 2017, "To prune, or not to prune", eq. 1).

Every ``frequency`` optimizer steps between ``start_epoch`` and ``end_epoch`` the weights of smallest magnitude
are masked, the sparsity rising on the cubic schedule s_t = s_f + (s_i - s_f)(1 - (t - t0) / (n dt))^3. Only
conv and linear weights (dim >= 2) are pruned; biases and BatchNorm stay dense. Pruned weights stay zero:
their gradients are zeroed before the exchange sees them (a tensor hook runs before AccumulateGrad, so
Horovod's and DDP's hooks get the masked gradient), the weights are masked again after every step, and at
each mask update whatever still remembers a pruned position (the optimizer's momentum, the exchange memory's
residuals and momenta) is zeroed there, so no sparsifier ever selects it again.
"""
import math

import torch

from dgc.storage.prune import keep_largest

SCOPES = ("layer", "global")


def prunable(model):
    """``(name, parameter)`` of ``model``'s trained conv and linear weights (dim >= 2), in model order."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]


class GradualPruner:
    """Magnitude masks over ``model``'s prunable weights on Zhu & Gupta's cubic schedule (eq. 1).

    ``start_epoch``/``end_epoch`` (numbers of epochs; ``end_epoch`` None: three quarters of ``num_epochs``,
    leaving the rest to recover at the final sparsity) become steps t0 and t_end with ``steps_per_epoch``; the
    masks are recomputed after the optimizer steps t0 + k * ``frequency`` (t >= 1) and after t_end, reaching
    ``final_sparsity`` there. ``scope`` "layer" prunes every tensor to s_t; "global" prunes s_t of all
    prunable weights together under one magnitude threshold. Pruned weights sort first (they never come
    back) and ties break by position (a stable sort), so every rank, holding the same weights, computes the
    same masks.
    """

    def __init__(self, model, steps_per_epoch, final_sparsity, initial_sparsity=0.0, start_epoch=0,
                 end_epoch=None, frequency=10, scope="layer", num_epochs=None):
        self.check(final_sparsity, initial_sparsity, start_epoch, end_epoch, frequency, scope, num_epochs)
        if end_epoch is None:
            end_epoch = 0.75 * num_epochs
        self.final_sparsity, self.initial_sparsity = float(final_sparsity), float(initial_sparsity)
        self.start_step = round(start_epoch * steps_per_epoch)
        self.end_step = max(self.start_step + 1, round(end_epoch * steps_per_epoch))
        self.frequency, self.scope = frequency, scope
        self.params = dict(prunable(model))
        self.masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in self.params.items()}
        self.steps = 0
        """Optimizer steps taken so far (t)."""
        self.optimizer = self.memory = None
        for name, p in self.params.items():
            p.register_hook(lambda grad, name=name: grad * self.masks[name])

    @staticmethod
    def check(final_sparsity, initial_sparsity=0.0, start_epoch=0, end_epoch=None, frequency=10, scope="layer",
              num_epochs=None):
        """Raise ValueError naming the first bad option (before anything is built or trained)."""
        for what, value in (("final_sparsity", final_sparsity), ("initial_sparsity", initial_sparsity)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"GradualPruner: {what}={value!r} must be a fraction in [0, 1)")
        if initial_sparsity > final_sparsity:
            raise ValueError(f"GradualPruner: initial_sparsity={initial_sparsity!r} exceeds final_sparsity="
                             f"{final_sparsity!r}; the schedule only rises")
        for what, value in (("start_epoch", start_epoch), ("end_epoch", end_epoch)):
            if value is None and what == "end_epoch":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"GradualPruner: {what}={value!r} must be a number of epochs >= 0")
        if end_epoch is None and num_epochs is None:
            raise ValueError("GradualPruner: end_epoch=None (three quarters of the run) needs num_epochs")
        end = 0.75 * num_epochs if end_epoch is None else end_epoch
        if end <= start_epoch:
            derived = " (None: three quarters of the run's epochs)" if end_epoch is None else ""
            raise ValueError(f"GradualPruner: end_epoch={end!r}{derived} must be after start_epoch={start_epoch!r}")
        if num_epochs is not None and end > num_epochs:
            raise ValueError(f"GradualPruner: end_epoch={end!r} is beyond the run's {num_epochs} epochs "
                             "(train.num_epochs); the final sparsity would never be reached")
        if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
            raise ValueError(f"GradualPruner: frequency={frequency!r} must be an int >= 1 (optimizer steps "
                             "between mask updates)")
        if scope not in SCOPES:
            raise ValueError(f"GradualPruner: scope={scope!r} must be 'layer' (each tensor to the sparsity) or "
                             "'global' (one threshold over all prunable weights)")

    def attach(self, optimizer, memory=None):
        """Zero ``optimizer``'s per-parameter state (momentum) and ``memory``'s buffers (a
        :class:`dgc.memory.Memory` keyed by these parameter names) at pruned positions on every mask update."""
        self.optimizer, self.memory = optimizer, memory

    def sparsity_at(self, step):
        """Eq. 1: the target sparsity after optimizer step ``step`` (s_i before t0, s_f from t_end on)."""
        progress = min(1.0, max(0.0, (step - self.start_step) / (self.end_step - self.start_step)))
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1 - progress) ** 3

    def updates_at(self, step):
        """Whether the masks are recomputed after optimizer step ``step``."""
        return self.start_step <= step <= self.end_step and (
            (step - self.start_step) % self.frequency == 0 or step == self.end_step)

    def step(self):
        """After every optimizer step: count it, recompute the masks when due, mask the weights."""
        self.steps += 1
        if self.updates_at(self.steps):
            self.update_masks(self.sparsity_at(self.steps))
        self.apply()

    @torch.no_grad()
    def update_masks(self, sparsity):
        """Mask the ``sparsity`` fraction of smallest magnitudes (per tensor or over all of them), then zero
        the pruned positions of the weights, the optimizer state and the memory."""
        names = list(self.params)
        scores = [torch.where(self.masks[n], self.params[n].detach().abs(), -1.0).reshape(-1) for n in names]
        if self.scope == "layer":
            for name, score in zip(names, scores):
                self.masks[name] = keep_largest(score, round(sparsity * score.numel())).view(self.params[name].shape)
        else:
            keep = keep_largest(torch.cat([s.to(scores[0].device) for s in scores]),
                         round(sparsity * sum(s.numel() for s in scores)))
            for name, part in zip(names, keep.split([s.numel() for s in scores])):
                self.masks[name] = part.to(self.params[name].device).view(self.params[name].shape)
        self.apply()
        for name, p in self.params.items():
            mask = self.masks[name]
            state = self.optimizer.state.get(p, {}) if self.optimizer is not None else {}
            for value in state.values():
                if torch.is_tensor(value) and value.shape == p.shape:
                    value.mul_(mask)
            if self.memory is not None:
                self.memory.mask(name, mask.reshape(-1))

    @torch.no_grad()
    def apply(self):
        """weights *= mask."""
        for name, p in self.params.items():
            p.mul_(self.masks[name])

    def sparsity(self):
        """The fraction of prunable weights masked now."""
        total = sum(m.numel() for m in self.masks.values())
        return sum(int((~m).sum()) for m in self.masks.values()) / max(total, 1)

    def state_dict(self):
        return {"steps": self.steps, "masks": {n: m.cpu() for n, m in self.masks.items()}}

    def load_state_dict(self, state):
        """Restore progress and masks (keyed by parameter name; the same names and shapes required), and mask
        the weights with them."""
        masks = state["masks"]
        if set(masks) != set(self.params):
            raise KeyError(f"GradualPruner.load_state_dict: masks for {sorted(set(masks) ^ set(self.params))[:5]} "
                           "do not match this model's prunable weights")
        for name, mask in masks.items():
            if mask.shape != self.params[name].shape:
                raise ValueError(f"GradualPruner.load_state_dict: mask {name!r} has shape {tuple(mask.shape)}, "
                                 f"the weight {tuple(self.params[name].shape)}")
            self.masks[name] = mask.to(self.params[name].device, torch.bool)
        self.steps = int(state["steps"])
        self.apply()
