"""Random-k sparsification (Stich et al., NeurIPS 2018): k random coordinates per tensor and step. Every
worker draws the *same* coordinates (a generator seeded by seed, tensor name and step), so the values go
by an averaging allreduce of k floats and no index travels."""
import torch

from dgc.compressors.base import Compressor, Payload, Sparse, check_fraction, check_min_numel, name_seed, num_selects


class RandomKCompressor(Compressor):
    """Send ``compress_ratio`` of each tensor's values at shared random positions (unscaled: pair it with
    ResidualMemory for error feedback). The per-tensor step counters are state, checkpointed so a resumed
    run draws the positions it would have drawn; they are equal on every compressing rank (shared state)."""

    shared_state = ("steps",)

    def __init__(self, compress_ratio=0.01, seed=0, min_compress_numel=1024):
        check_fraction("RandomKCompressor", "compress_ratio", compress_ratio,
                       "the fraction of gradient values sent per step")
        self.compress_ratio = float(compress_ratio)
        self.seed = int(seed)
        self.min_compress_numel = check_min_numel("RandomKCompressor", min_compress_numel)
        self.steps = {}

    def compress(self, tensor, name):
        flat = tensor.view(-1)
        k = num_selects(flat.numel(), self.compress_ratio)
        step = self.steps.get(name, 0)
        self.steps[name] = step + 1
        generator = torch.Generator(device=flat.device).manual_seed(name_seed(self.seed, name) * 65_537 + step)
        indices = torch.randperm(flat.numel(), generator=generator, device=flat.device)[:k]
        values = flat[indices]
        return Payload(values, "allreduce", k, Sparse(indices, values.clone())), (indices, flat.numel())

    def decompress(self, result, ctx, out=None):
        indices, numel = ctx
        if out is None or out.dtype != result.dtype:     # a 16-bit gradient's memory sends float32
            out = torch.zeros(numel, dtype=result.dtype, device=result.device)
        else:
            out.zero_()
        return out.index_copy_(0, indices, result)

    def state_dict(self):
        return {"steps": dict(self.steps)}

    def load_state_dict(self, state):
        self.steps = dict(state["steps"])
