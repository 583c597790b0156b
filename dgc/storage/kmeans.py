"""Weight sharing: one layer's weights clustered to ``2**bits`` shared values (Deep Compression, Han et al.
2016, §3.1-3.2), the centroids initialised linearly over the weights' range (the paper's best choice: it
keeps the rare large weights their own centroids)."""
import torch


def cluster(values, bits, iterations=300):
    """``(codebook, codes)`` for the 1-D float tensor ``values``: at most ``2**bits`` increasing fp16
    centroids and, per value, the index of its nearest one, so ``codebook[codes]`` is what is stored. Lloyd's
    iterations (assignment by the midpoints between sorted centroids) run until no assignment changes;
    the centroids are then rounded to fp16 and every value reassigned to its nearest rounded one."""
    values = values.detach().reshape(-1).float()
    if values.numel() == 0:
        return torch.zeros(0, dtype=torch.float16), torch.zeros(0, dtype=torch.long)
    k = 1 << bits
    ordered = values.sort().values.double()
    prefix = torch.cat([ordered.new_zeros(1), ordered.cumsum(0)])
    centroids = torch.linspace(ordered[0].item(), ordered[-1].item(), k, dtype=torch.float64)
    splits = None
    for _ in range(iterations):     # clusters are runs of the sorted values: each step costs O(k log n)
        ends = torch.searchsorted(ordered, (centroids[1:] + centroids[:-1]) / 2, right=True)
        new = torch.cat([ends.new_zeros(1), ends, ends.new_full((1,), ordered.numel())])
        if splits is not None and torch.equal(new, splits):
            break
        splits = new
        counts = splits[1:] - splits[:-1]
        sums = prefix[splits[1:]] - prefix[splits[:-1]]
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids).sort().values
    codebook = torch.unique(centroids.half())        # sorted; equal centroids merge
    if not torch.isfinite(codebook).all():
        raise ValueError(f"weights up to {values.abs().max().item():.3g} do not fit an fp16 codebook")
    rounded = codebook.float()
    return codebook, torch.bucketize(values, (rounded[1:] + rounded[:-1]) / 2)
