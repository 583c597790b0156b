"""Learning-rate schedules, stepped once per iteration (so warm-up is smooth)."""
import math

import torch


def cosine_with_warmup(optimizer, steps_per_epoch, num_epochs, warmup_epochs=5, final_factor=0.0):
    """Linear warm-up from 1/warm-up-steps to the base lr over ``warmup_epochs`` (Goyal et al. 2017, for
    large total batches), then cosine decay to ``final_factor`` of it by the last step."""
    warmup = max(0, int(warmup_epochs * steps_per_epoch))
    total = max(1, num_epochs * steps_per_epoch)

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def multistep_with_warmup(optimizer, steps_per_epoch, num_epochs, milestones=(0.5, 0.75), gamma=0.1,
                          warmup_epochs=0):
    """Step decay by ``gamma`` at the given fractions of training (He et al. 2016 use 50% and 75%),
    after an optional linear warm-up."""
    warmup = int(warmup_epochs * steps_per_epoch)
    bounds = [int(m * num_epochs * steps_per_epoch) for m in milestones]

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return gamma ** sum(step >= b for b in bounds)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
