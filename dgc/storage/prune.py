"""Magnitude pruning (Han et al. 2015; Deep Compression §2): the smallest weights by absolute value are
removed, per layer or with one threshold over all layers."""
import torch


def magnitude_masks(weights, sparsity, scope="layer"):
    """Keep-masks (bool, each tensor's shape) removing the ``sparsity`` fraction of smallest magnitudes:
    of each tensor of the dict ``weights`` ("layer"), or of all of them together ("global", so layers with
    many small weights lose more). Exactly ``round(sparsity * numel)`` go; ties by position (stable sort),
    so every replica of the same weights gets the same masks."""
    if scope not in ("layer", "global"):
        raise ValueError(f"pruning scope {scope!r}: expected 'layer' or 'global'")
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity {sparsity}: expected a fraction in [0, 1)")
    if scope == "layer":
        return {name: keep_largest(w.detach().abs().reshape(-1), round(sparsity * w.numel())).reshape(w.shape)
                for name, w in weights.items()}
    flat = torch.cat([w.detach().abs().reshape(-1).float() for w in weights.values()])
    keep = keep_largest(flat, round(sparsity * flat.numel()))
    masks, start = {}, 0
    for name, w in weights.items():
        masks[name] = keep[start:start + w.numel()].reshape(w.shape)
        start += w.numel()
    return masks


def keep_largest(scores, pruned):
    """A bool mask over the flat ``scores`` keeping all but the ``pruned`` lowest (ties by position: a stable
    sort, the same on every replica)."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if pruned > 0:
        keep[torch.sort(scores, stable=True).indices[:pruned]] = False
    return keep
