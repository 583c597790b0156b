"""PowerSGD (Vogels et al., NeurIPS 2019, Algorithm 1): a rank-r approximation P Q^T of each gradient
matrix from one step of subspace iteration, warm-started from the last step's Q, in two allreduce rounds.
Pair it with ResidualMemory for the paper's error feedback (configs/compression/powersgd.py)."""
import torch

from dgc.compressors.base import Compressor, Payload, check_min_numel, name_seed


class PowerSGDCompressor(Compressor):
    """The tensor is viewed as a matrix M (first dimension by the rest). Round 1 allreduces P = M Q; P is
    orthogonalized (reduced QR, identical on every rank); round 2 allreduces Q = M^T P. This worker's
    ``sent`` is P Q_local^T, so error feedback keeps M - P Q_local^T, and the average of what the workers
    sent is P Q_avg^T, the result. Q starts from the same seeded normal matrix on every rank and is kept
    (the averaged Q) as the next step's start; it is state, checkpointed, equal on every compressing rank
    (shared state)."""

    shared_state = ("q",)

    def __init__(self, rank=2, seed=0, min_compress_numel=1024):
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"PowerSGDCompressor: rank={rank!r} must be an int >= 1")
        self.rank = rank
        self.seed = int(seed)
        self.min_compress_numel = check_min_numel("PowerSGDCompressor", min_compress_numel)
        self.q = {}

    def compress(self, tensor, name):
        matrix = tensor.reshape(tensor.shape[0], -1)
        rank = min(self.rank, *matrix.shape)
        q = self.q.get(name)
        if q is None or q.shape != (matrix.shape[1], rank):
            generator = torch.Generator().manual_seed(name_seed(self.seed, name))
            q = torch.randn(matrix.shape[1], rank, generator=generator).to(matrix)
        p = matrix @ q
        return Payload(p, "allreduce", p.numel()), ("p", name, matrix)

    def decompress(self, result, ctx, out=None):
        if ctx[0] == "p":
            _, name, matrix = ctx
            p = torch.linalg.qr(result).Q
            q = matrix.t() @ p
            return Payload(q, "allreduce", q.numel(), sent=p @ q.t()), ("q", name, p)
        _, name, p = ctx
        self.q[name] = result.clone()
        return p @ result.t()

    def state_dict(self):
        return {"q": dict(self.q)}

    def load_state_dict(self, state):
        self.q = {name: q.clone() for name, q in state["q"].items()}
