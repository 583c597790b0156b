"""Low-rank factorisation of a weight viewed as a matrix ``[out, in * kh * kw]`` by truncated SVD (Denton et
al. 2014; Eckart-Young: the best approximation of its rank in Frobenius norm)."""
import torch


def rank_for(singular, rank):
    """The rank to keep: ``rank`` itself (an int >= 1, at most the matrix's), or for a float in (0, 1) the
    fewest singular values holding that fraction of the energy (sum of squares)."""
    if isinstance(rank, float):
        energy = torch.cumsum(singular.double() ** 2, 0)
        return int(torch.searchsorted(energy, rank * energy[-1]).item()) + 1
    return min(rank, singular.numel())


def factor(weight, rank):
    """``(left, right)`` with ``left @ right`` the truncated SVD of ``weight`` as ``[out, -1]``: left is ``U S``
    (``[out, r]``), right is ``V^T`` (``[r, -1]``); or None when the two factors would not be smaller."""
    matrix = weight.detach().reshape(weight.shape[0], -1).float()
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    r = min(rank_for(s, rank), s.numel())
    if r * sum(matrix.shape) >= matrix.numel():
        return None
    return (u[:, :r] * s[:r]).contiguous(), vh[:r].contiguous()
