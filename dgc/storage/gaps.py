"""Relative indices of a pruned tensor's kept positions (Deep Compression, Han et al. 2016, §2, Figure 2).

Each kept position is stored as its gap from the previous one (the first from position -1) in ``bits``-bit
symbols: symbol ``s >= 1`` is a gap of ``s``; symbol 0 is the escape, a jump of ``2**bits - 1`` positions
with no value (the paper's filler zero, without storing a zero weight). With 1 bit this is a bit mask.
"""
import numpy as np

from dgc.storage import huffman

MAX_BITS = 12


def encode(positions, bits):
    """Gap symbols of the increasing flat ``positions`` (int array) with ``bits``-bit symbols."""
    positions = np.asarray(positions, dtype=np.int64)
    gaps = np.diff(positions, prepend=-1)
    if gaps.size and gaps.min() < 1:
        raise ValueError("positions must be strictly increasing and non-negative")
    jump = (1 << bits) - 1
    escapes = (gaps - 1) // jump
    symbols = np.zeros(int(escapes.sum()) + gaps.size, dtype=np.int64)
    symbols[np.cumsum(escapes + 1) - 1] = gaps - escapes * jump
    return symbols


def decode(symbols, bits):
    """The positions :func:`encode` coded as ``symbols``."""
    symbols = np.asarray(symbols, dtype=np.int64)
    advance = np.where(symbols == 0, (1 << bits) - 1, symbols)
    return (np.cumsum(advance) - 1)[symbols != 0]


def symbol_counts(positions, bits):
    """How often each of the ``2**bits`` symbols occurs in :func:`encode`'s output (without building it)."""
    gaps = np.diff(np.asarray(positions, dtype=np.int64), prepend=-1)
    jump = (1 << bits) - 1
    escapes = (gaps - 1) // jump
    counts = np.bincount(gaps - escapes * jump, minlength=1 << bits)
    counts[0] = escapes.sum()
    return counts


def best_bits(positions, numel, entropy_coded):
    """The symbol width (1..:data:`MAX_BITS`, and no wider than ``numel`` needs) giving the fewest bytes, with
    fixed-width symbols or, when ``entropy_coded``, Huffman-coded ones (its table included)."""
    widest = min(MAX_BITS, max(1, int(numel).bit_length()))
    sizes = {}
    for bits in range(1, widest + 1):
        counts = symbol_counts(positions, bits)
        sizes[bits] = huffman.encoded_size(counts) if entropy_coded else -(-int(counts.sum()) * bits // 8)
    return min(sizes, key=sizes.get)
