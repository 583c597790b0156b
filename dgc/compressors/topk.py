"""Top-k sparsification (Aji & Heafield 2017; Stich et al. 2018 with error feedback): the k largest |values|
by an exact ``torch.topk``. Pair it with ``ResidualMemory`` for error feedback (``configs/compression/topk.py``)."""
from dgc.compressors.sparse import SparseCompressor


class TopKCompressor(SparseCompressor):
    """Send the exact top ``compress_ratio`` fraction of each tensor by magnitude (no sampling: the
    reference that DGC's sampled threshold is measured against in ``scripts/bench_compression.py``)."""

    def select(self, x, k):
        return x.abs().topk(k, sorted=False).indices
