"""Bit streams: unsigned codes of any width (fixed or one per symbol) packed most significant bit first."""
import numpy as np

_CHUNK = 1 << 20


def pack(codes, lengths):
    """The bytes of ``codes`` (unsigned integers) written one after another, each in its ``lengths`` bits
    (an int: every code the same width; an array: one width per code), most significant bit first, the last
    byte padded with zeros."""
    codes = np.asarray(codes, dtype=np.uint64).reshape(-1)
    lengths = np.broadcast_to(np.asarray(lengths, dtype=np.int64), codes.shape)
    if codes.size == 0:
        return b""
    width = int(lengths.max())
    if width > 64 or int(lengths.min()) < 1:
        raise ValueError(f"bit lengths must lie in 1..64, got {int(lengths.min())}..{width}")
    if np.any(codes >> lengths.astype(np.uint64) != 0):
        raise ValueError("a code does not fit in its bit length")
    position = np.arange(width, dtype=np.int64)
    pieces = []
    for start in range(0, codes.size, _CHUNK):     # bounded memory: one bit matrix row per code
        c, n = codes[start:start + _CHUNK], lengths[start:start + _CHUNK]
        shift = (n[:, None] - 1 - position).clip(min=0).astype(np.uint64)
        matrix = ((c[:, None] >> shift) & np.uint64(1)).astype(np.uint8)
        pieces.append(matrix[position < n[:, None]])
    return np.packbits(np.concatenate(pieces)).tobytes()


def unpack_fixed(data, width, count):
    """The first ``count`` codes of ``width`` bits in ``data`` (:func:`pack` with one width), as int64."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    needed = -(-count * width // 8)
    if len(data) < needed:
        raise ValueError(f"{count} codes of {width} bits need {needed} bytes, the stream has {len(data)}")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8, count=needed))[:count * width]
    weights = np.left_shift(np.int64(1), np.arange(width - 1, -1, -1, dtype=np.int64))
    return bits.reshape(count, width).astype(np.int64) @ weights


def windows(data, width, bit_count):
    """For every bit offset below ``bit_count``, the ``width`` bits of ``data`` starting there as an integer
    (zeros past the end): what a table decoder looks up."""
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))[:bit_count].astype(np.int64)
    bits = np.concatenate([bits, np.zeros(width, dtype=np.int64)])
    value = np.zeros(bit_count, dtype=np.int64)
    for j in range(width):          # one vector operation per bit of the window (width <= 16)
        value = (value << 1) | bits[j:j + bit_count]
    return value
