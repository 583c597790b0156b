"""Gradient compressors: the math that turns a gradient into a fixed-size payload and back.

A compressor never communicates. ``compress`` returns a :class:`Payload` that names the collective it
needs ("allreduce": averaged in place; "allgather": concatenated over workers) and a context;
``decompress`` turns the collective's result into the averaged dense gradient. The exchange itself
lives in a communicator (see :mod:`dgc.communication`).
"""
import math
from dataclasses import dataclass

import torch

from dgc.memory import Memory

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@dataclass
class Payload:
    """What one worker sends for one tensor: ``tensor`` through ``collective``, carrying ``num_values``
    gradient values (for the density metric)."""
    tensor: torch.Tensor
    collective: str
    num_values: int


class Compressor:
    """No compression: the gradient goes dense through an averaging allreduce."""

    def initialize(self, named_parameters, world_size):
        """Called once by the distributed optimizer with the (name, parameter) pairs it will exchange."""

    def is_compressed(self, name):
        return False

    def compress(self, tensor, name):
        return Payload(tensor, "allreduce", tensor.numel()), None

    def decompress(self, result, ctx, out):
        """Write the averaged gradient into ``out`` (a no-op when the allreduce already ran in place)."""
        if result.data_ptr() != out.data_ptr():
            out.copy_(result)
        return out

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


@dataclass
class _SparseCtx:
    """What decompress needs to unpack the allgathered payloads of one tensor."""
    name: str
    k: int


class DGCCompressor(Compressor):
    """Deep Gradient Compression (Lin et al., ICLR 2018, §3.1): send the top ``compress_ratio`` fraction of
    each large gradient by magnitude, keep the rest in ``memory`` (momentum correction, §3.2).

    The threshold comes from a sample (``sample_ratio`` of the elements, strided or random) aimed at
    ``compress_upper_bound * k`` candidates, so one scan almost always finds at least k; an exact
    top-k over the candidates (``resample=True``; else the first k) trims them to exactly k. When a scan
    finds fewer than k the threshold is multiplied by ``compress_lower_bound`` and the scan repeated, at
    most ``max_adaptation_iters`` times, then an exact top-k over the tensor is used. Every worker thus
    sends exactly k (value, index) pairs per tensor: a fixed-size allgather, never empty.
    Tensors with fewer than two dimensions or fewer than ``min_compress_numel`` elements go dense.
    Warm-up (§3.3 "warm-up training"): the ratio falls exponentially over ``warmup_epochs`` epochs,
    ``warmup_coeff ** (epoch + 1)`` (default coefficient ``compress_ratio ** (1 / (warmup_epochs + 1))``,
    i.e. 25%, 6.25%, 1.56%, 0.4%, 0.1% for four epochs), or a list of per-epoch ratios.
    """

    def __init__(self, compress_ratio=0.001, memory=None, sample_ratio=0.01, strided_sample=True,
                 compress_upper_bound=1.3, compress_lower_bound=0.8, max_adaptation_iters=10,
                 resample=True, fp16_values=False, int32_indices=False, warmup_epochs=-1,
                 warmup_coeff=None, min_compress_numel=1024, min_sample_topk=8):
        _check_fraction("compress_ratio", compress_ratio, "the fraction of gradient values sent per step")
        _check_fraction("sample_ratio", sample_ratio, "the fraction of elements sampled for the threshold")
        if not compress_upper_bound >= 1:
            raise ValueError(f"DGCCompressor: compress_upper_bound={compress_upper_bound!r} must be >= 1 "
                             "(how many candidates, in units of k, the sampled threshold aims for)")
        if not 0 < compress_lower_bound < 1:
            raise ValueError(f"DGCCompressor: compress_lower_bound={compress_lower_bound!r} must be in (0, 1) "
                             "(the factor that lowers the threshold when too few values pass it)")
        if not (isinstance(max_adaptation_iters, int) and max_adaptation_iters >= 0):
            raise ValueError(f"DGCCompressor: max_adaptation_iters={max_adaptation_iters!r} must be an int >= 0")
        if isinstance(warmup_coeff, (list, tuple)):
            if len(warmup_coeff) < warmup_epochs:
                raise ValueError(f"DGCCompressor: warmup_coeff has {len(warmup_coeff)} per-epoch ratios, "
                                 f"warmup_epochs={warmup_epochs} needs at least that many")
            for ratio in warmup_coeff:
                _check_fraction("warmup_coeff entry", ratio, "a per-epoch warm-up ratio")
        elif warmup_coeff is not None:
            _check_fraction("warmup_coeff", warmup_coeff, "the per-epoch factor of the warm-up ratio")
        self.base_compress_ratio = self.compress_ratio = float(compress_ratio)
        self.memory = memory if memory is not None else Memory()
        self.sample_ratio = float(sample_ratio)
        self.strided_sample = strided_sample
        self.compress_upper_bound = float(compress_upper_bound)
        self.compress_lower_bound = float(compress_lower_bound)
        self.max_adaptation_iters = max_adaptation_iters
        self.resample = resample
        self.value_dtype = torch.float16 if fp16_values else None
        self.index_dtype = torch.int32 if int32_indices else torch.int64
        self.warmup_epochs = int(warmup_epochs)
        self.warmup_coeff = warmup_coeff
        self.min_compress_numel = int(min_compress_numel)
        self.min_sample_topk = int(min_sample_topk)
        self._compressed = set()
        self._scan = _Scanner()

    def initialize(self, named_parameters, world_size):
        """Choose the compressed tensors: at least 2-d (not biases / BatchNorm) and large enough."""
        self._compressed = {name for name, p in named_parameters
                            if p.dim() > 1 and p.numel() >= self.min_compress_numel}
        too_big = [name for name, p in named_parameters
                   if name in self._compressed and p.numel() >= 2 ** 31 and self.index_dtype == torch.int32]
        if too_big:
            raise ValueError(f"DGCCompressor: int32_indices cannot address {too_big[0]!r} (>= 2^31 elements)")
        self.memory.initialize(world_size)

    def is_compressed(self, name):
        return name in self._compressed

    def warmup_compress_ratio(self, epoch):
        """Set the ratio for ``epoch`` (0-based; a float gives a per-step schedule) and return it."""
        if 0 <= epoch < self.warmup_epochs:
            if isinstance(self.warmup_coeff, (list, tuple)):
                ratio = self.warmup_coeff[int(epoch)]
            else:
                coeff = self.warmup_coeff or self.base_compress_ratio ** (1.0 / (self.warmup_epochs + 1))
                ratio = coeff ** (epoch + 1)
            self.compress_ratio = max(float(ratio), self.base_compress_ratio)
        else:
            self.compress_ratio = self.base_compress_ratio
        return self.compress_ratio

    def num_selects(self, numel):
        """k: how many values a tensor of ``numel`` elements sends at the current ratio (at least one)."""
        return min(numel, max(1, round(numel * self.compress_ratio)))

    def compress(self, tensor, name):
        if name not in self._compressed:
            return super().compress(tensor, name)
        _check_tensor(tensor, name)
        flat = self.memory.compensate(tensor.reshape(-1), name)
        k = self.num_selects(flat.numel())
        indices = self.select(flat, k)
        values = flat[indices]
        self.memory.update(name, indices)
        payload = torch.cat([values.to(self.value_dtype or values.dtype).view(torch.uint8),
                             indices.to(self.index_dtype).view(torch.uint8)])
        return Payload(payload, "allgather", k), _SparseCtx(name, k)

    def decompress(self, result, ctx, out):
        """Scatter-add every worker's (values, indices) into ``out`` and average (values back in out's
        dtype first, so fp16 never accumulates)."""
        if ctx is None:
            return super().decompress(result, ctx, out)
        value_dtype = self.value_dtype or out.dtype
        value_bytes = ctx.k * _itemsize(value_dtype)
        per_worker = result.view(-1, value_bytes + ctx.k * _itemsize(self.index_dtype))
        values = per_worker[:, :value_bytes].clone(memory_format=torch.contiguous_format).view(value_dtype).reshape(-1)
        indices = per_worker[:, value_bytes:].clone(memory_format=torch.contiguous_format).view(self.index_dtype).reshape(-1)
        flat = out.view(-1)
        flat.zero_()
        flat.index_add_(0, indices.long(), values.to(out.dtype), alpha=1.0 / per_worker.shape[0])
        return out

    def select(self, x, k):
        """Indices of the k largest |x| (1-d): sampled threshold, one scan, exact trim (see class doc)."""
        numel = x.numel()
        if k >= numel:
            return torch.arange(numel, device=x.device)
        num_samples = max(math.ceil(numel * self.sample_ratio), min(numel, 1024))
        if 2 * num_samples >= numel:
            return x.abs().topk(k, sorted=False).indices
        sample = self._sample(x, num_samples)
        sample_k = min(sample.numel(), max(self.min_sample_topk,
                                           math.ceil(sample.numel() * k / numel * self.compress_upper_bound)))
        threshold = sample.abs().topk(sample_k, sorted=False).values.min()
        for _ in range(self.max_adaptation_iters + 1):
            candidates = self._scan(x, threshold)
            if candidates.numel() >= k:
                break
            threshold = threshold * self.compress_lower_bound
        else:
            return x.abs().topk(k, sorted=False).indices
        if candidates.numel() == k:
            return candidates
        if self.resample:
            return candidates[x[candidates].abs().topk(k, sorted=False).indices]
        return candidates[:k]

    def _sample(self, x, num_samples):
        numel = x.numel()
        if self.strided_sample:
            stride = numel // num_samples
            start = int(torch.randint(stride, (1,)))
            return x[start::stride]
        return x[torch.randint(numel, (num_samples,), device=x.device)]

    def state_dict(self):
        return {"compress_ratio": self.compress_ratio, "memory": self.memory.state_dict()}

    def load_state_dict(self, state):
        self.compress_ratio = state["compress_ratio"]
        self.memory.load_state_dict(state["memory"])


_SCAN_CHUNK = 1 << 16


class _Scanner:
    """Flat indices where |x| >= threshold in one pass over x and no full-size temporaries.

    On the CPU, |x| is formed chunk by chunk in a cache-sized buffer and compared into a reused boolean
    mask; the mask is then read as 64-bit words, so ``nonzero`` scans an eighth of the elements and only
    the few non-zero words are expanded to element indices. Elsewhere (GPU) plain torch ops are fast.
    Buffers are reused across calls (compression runs tensor by tensor, never concurrently)."""

    def __init__(self):
        self.mask = self.chunk = None

    def __call__(self, x, threshold):
        numel = x.numel()
        if x.device.type != "cpu" or numel <= _SCAN_CHUNK:
            return torch.nonzero(x.abs() >= threshold).view(-1)
        padded = -(-numel // 8) * 8
        if self.mask is None or self.mask.numel() < padded:
            self.mask = torch.empty(padded, dtype=torch.bool)
        if self.chunk is None or self.chunk.dtype != x.dtype:
            self.chunk = torch.empty(_SCAN_CHUNK, dtype=x.dtype)
        mask = self.mask[:padded]
        mask[numel:] = False
        for start in range(0, numel, _SCAN_CHUNK):
            part = x[start:start + _SCAN_CHUNK]
            magnitude = self.chunk[:part.numel()]
            torch.abs(part, out=magnitude)
            torch.ge(magnitude, threshold, out=mask[start:start + part.numel()])
        words = torch.nonzero(mask.view(torch.int64)).view(-1)
        candidates = (words.unsqueeze(1) * 8 + torch.arange(8)).view(-1)
        return candidates[mask[candidates]]


def _itemsize(dtype):
    return torch.empty((), dtype=dtype).element_size()


def _check_fraction(what, value, meaning):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"DGCCompressor: {what}={value!r} is outside (0, 1]; it is {meaning}")


def _check_tensor(tensor, name):
    """Reject what would corrupt the residual: an unsupported dtype, or non-finite values (one reduction;
    the host sync it costs is of the same kind as the selection's own)."""
    if tensor.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"DGCCompressor: gradient of {name!r} has dtype {tensor.dtype}; "
                        f"supported: {', '.join(str(d) for d in SUPPORTED_DTYPES)}")
    total = tensor.sum(dtype=torch.float32) if tensor.element_size() < 4 else tensor.sum()
    if not torch.isfinite(total):
        raise FloatingPointError(f"DGCCompressor: gradient of {name!r} has non-finite values (nan or inf); "
                                 "it was not accumulated into the residual")
