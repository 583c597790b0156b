"""Deep Gradient Compression's sparsifier (Lin et al., ICLR 2018, §3.1 and §3.3): a threshold from a sample,
one scan, an exact trim to k, and the warm-up of the sparsity."""
import math

import torch

from dgc.compressors.base import check_fraction
from dgc.compressors.sparse import SparseCompressor


class DGCCompressor(SparseCompressor):
    """Send the top ``compress_ratio`` fraction of each large gradient by magnitude (§3.1).

    The threshold comes from a sample (``sample_ratio`` of the elements, strided or random) aimed at
    ``compress_upper_bound * k`` candidates, so one scan almost always finds at least k; an exact top-k over
    the candidates (``resample=True``; else the first k) trims them to exactly k. When a scan finds fewer
    than k, the threshold is multiplied by ``compress_lower_bound`` and the scan repeated, at most
    ``max_adaptation_iters`` times, then an exact top-k over the tensor is used.
    Warm-up (§3.3): during the first ``warmup_epochs`` epochs the ratio is ``warmup_coeff ** (epoch + 1)``
    (default coefficient ``compress_ratio ** (1 / (warmup_epochs + 1))``: 31.6%, 10%, 3.2%, 1%, 0.32% for
    five epochs, the reference code's schedule; ``warmup_coeff=0.25`` over four epochs gives the paper's
    25%, 6.25%, 1.5625%, 0.39%), or the per-epoch ratios of a list.
    ``dense_switch`` (on by default; SparCML, SC'19): a selection whose allgather of pairs would move more bytes
    than a dense allreduce (the first warm-up epoch's 25% with 12-byte pairs from 3 workers on, 6-byte pairs
    from 6) goes densely instead, with the same average and residual (see :class:`SparseCompressor`).
    ``memory`` is accepted for the reference implementation's API: the distributed optimizer uses it when
    it is given no memory of its own; this class never calls it.
    """

    def __init__(self, compress_ratio=0.001, memory=None, sample_ratio=0.01, strided_sample=True,
                 compress_upper_bound=1.3, compress_lower_bound=0.8, max_adaptation_iters=10,
                 resample=True, fp16_values=False, int32_indices=False, warmup_epochs=-1,
                 warmup_coeff=None, min_compress_numel=1024, min_sample_topk=8, compact_indices=False,
                 dense_switch=True):
        super().__init__(compress_ratio, fp16_values, int32_indices, min_compress_numel,
                         compact_indices=compact_indices, dense_switch=dense_switch)
        check_fraction("DGCCompressor", "sample_ratio", sample_ratio,
                       "the fraction of elements sampled for the threshold")
        for what, value in (("compress_upper_bound", compress_upper_bound), ("compress_lower_bound", compress_lower_bound),
                            ("max_adaptation_iters", max_adaptation_iters), ("warmup_epochs", warmup_epochs)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"DGCCompressor: {what}={value!r} must be a number")
        if warmup_epochs != int(warmup_epochs):
            raise ValueError(f"DGCCompressor: warmup_epochs={warmup_epochs!r} must be a whole number of epochs")
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
                check_fraction("DGCCompressor", "warmup_coeff entry", ratio, "a per-epoch warm-up ratio")
        elif warmup_coeff is not None:
            check_fraction("DGCCompressor", "warmup_coeff", warmup_coeff, "the per-epoch factor of the warm-up ratio")
        self.base_compress_ratio = self.compress_ratio
        self.memory = memory
        self.sample_ratio = float(sample_ratio)
        self.strided_sample = strided_sample
        self.compress_upper_bound = float(compress_upper_bound)
        self.compress_lower_bound = float(compress_lower_bound)
        self.max_adaptation_iters = max_adaptation_iters
        self.resample = resample
        self.warmup_epochs = int(warmup_epochs)
        self.warmup_coeff = warmup_coeff
        self.min_sample_topk = int(min_sample_topk)
        self._scan = _Scanner()

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

    set_epoch = warmup_compress_ratio

    def select(self, x, k):
        """Indices of the k largest |x| (1-d): sampled threshold, one scan, exact trim (see class doc)."""
        numel = x.numel()
        if k >= numel:
            return torch.arange(numel, device=x.device)
        num_samples = max(math.ceil(numel * self.sample_ratio), min(numel, 1024))
        if 2 * num_samples >= numel:
            return x.abs().topk(k, sorted=False).indices
        threshold = self._threshold(x, k, num_samples)
        for _ in range(self.max_adaptation_iters + 1):      # each scan reads its candidate count on the host
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

    def _sample_k(self, num_samples, k, numel):
        """How many of ``num_samples`` sampled magnitudes lie above the threshold: the sample's share of
        ``compress_upper_bound * k``, at least ``min_sample_topk``."""
        return min(num_samples, max(self.min_sample_topk,
                                    math.ceil(num_samples * k / numel * self.compress_upper_bound)))

    def _threshold(self, x, k, num_samples):
        """The sampled threshold, a 0-d tensor on ``x``'s device (no host read): the ``_sample_k``-th largest
        |value| of ``num_samples`` random elements, or of every ``stride``-th one from a random start in
        [0, stride) (``x[start::stride]``: q or q + 1 elements, where numel = q * stride + r, as start < r). Its
        size depends on the start, which stays on the device: the q + 1 positions are taken, the last one's
        magnitude is 0 when it lies past the end (a 0 never lowers the k-th largest of magnitudes), and the
        k-th largest for the true size is picked from one sorted top-k."""
        numel = x.numel()
        if not self.strided_sample:
            sample = x[torch.randint(numel, (num_samples,), device=x.device)]
            return sample.abs().topk(self._sample_k(num_samples, k, numel), sorted=False).values.min()
        stride = numel // num_samples
        start = torch.randint(stride, (1,), device=x.device)
        full, extra = divmod(numel, stride)
        positions = start + stride * torch.arange(full + (extra > 0), device=x.device)
        magnitude = x[positions.clamp(max=numel - 1)].abs()
        if not extra:
            return magnitude.topk(self._sample_k(full, k, numel), sorted=False).values.min()
        magnitude = torch.where(positions < numel, magnitude, 0)
        short, long = self._sample_k(full, k, numel), self._sample_k(full + 1, k, numel)
        top = magnitude.topk(max(short, long)).values
        return top[torch.where(start < extra, long, short) - 1].reshape(())


_SCAN_CHUNK = 1 << 16


class _Scanner:
    """Flat indices where |x| >= threshold in one pass over x and no full-size temporaries.

    On the CPU, |x| is formed chunk by chunk in a cache-sized buffer and compared into a reused boolean
    mask; the mask is then read as 64-bit words, so ``nonzero`` scans an eighth of the elements and only
    the few non-zero words are expanded to element indices (two reads of a count, of host memory: nothing
    waits). Elsewhere (GPU) plain torch ops are fast, and ``nonzero`` reads its count once.
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
