"""Canonical Huffman coding of small-alphabet symbol streams (Deep Compression, Han et al. 2016, §4).

A stream is ``[code length per symbol: uint8 x alphabet][bit length of every block but the last: uint16
little-endian][the codes, most significant bit first]``. Codes are canonical (assigned in order of length,
then symbol), so the lengths alone define them; they are at most :data:`MAX_LENGTH` bits, so one table of
``2**MAX_LENGTH`` entries decodes. Symbols go in blocks of :data:`BLOCK` whose starts are known, so every
block decodes at once, one vector step per symbol of a block.
"""
import heapq

import numpy as np

from dgc.storage import bits

MAX_LENGTH = 16
BLOCK = 1024


def code_lengths(counts, max_length=MAX_LENGTH):
    """Huffman code lengths (0 for symbols that never occur) for symbol ``counts``, at most ``max_length``
    bits: where the optimal tree is deeper, the counts are halved (rounding up) until it is not."""
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(counts.size, dtype=np.int64)
    present = np.flatnonzero(counts)
    if present.size == 1:
        lengths[present] = 1
    if present.size <= 1:
        return lengths
    if present.size > 1 << max_length:
        raise ValueError(f"{present.size} symbols do not fit in codes of {max_length} bits")
    weights = counts[present]
    while True:
        depth = _depths(weights)
        if depth.max() <= max_length:
            lengths[present] = depth
            return lengths
        weights = (weights + 1) >> 1


def _depths(weights):
    """Leaf depths of the Huffman tree over ``weights`` (ties broken by node number: deterministic)."""
    k = len(weights)
    heap = [(int(w), i) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    parent = np.full(2 * k - 1, -1, dtype=np.int64)
    node = k
    while len(heap) > 1:
        w1, a = heapq.heappop(heap)
        w2, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (w1 + w2, node))
        node += 1
    depth = np.zeros(2 * k - 1, dtype=np.int64)
    for n in range(2 * k - 3, -1, -1):      # parents are numbered after their children
        depth[n] = depth[parent[n]] + 1
    return depth[:k]


def canonical_codes(lengths):
    """The canonical code of every symbol of code ``lengths`` (0 where absent)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(lengths.size, dtype=np.int64)
    order = np.lexsort((np.arange(lengths.size), lengths))
    order = order[lengths[order] > 0]
    code, previous = 0, 0
    for symbol in order:
        code <<= int(lengths[symbol]) - previous
        codes[symbol] = code
        code += 1
        previous = int(lengths[symbol])
    return codes


def encoded_size(counts):
    """Bytes :func:`encode` writes for a stream with these symbol ``counts`` (the alphabet is their length)."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    blocks = -(-total // BLOCK)
    payload_bits = int((counts * code_lengths(counts)).sum())
    return counts.size + 2 * max(blocks - 1, 0) + -(-payload_bits // 8)


def encode(symbols, alphabet):
    """The stream of ``symbols`` (integers in ``[0, alphabet)``)."""
    symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
    counts = np.bincount(symbols, minlength=alphabet)
    if counts.size > alphabet:
        raise ValueError(f"symbol {int(symbols.max())} is outside the alphabet of {alphabet}")
    lengths = code_lengths(counts)
    codes = canonical_codes(lengths)
    symbol_bits = lengths[symbols]
    starts = np.arange(0, symbols.size, BLOCK)
    block_bits = np.add.reduceat(symbol_bits, starts)[:-1] if symbols.size else np.zeros(0, dtype=np.int64)
    return (lengths.astype(np.uint8).tobytes() + block_bits.astype("<u2").tobytes()
            + bits.pack(codes[symbols], symbol_bits))


def decode(data, count, alphabet):
    """The ``count`` symbols of an :func:`encode` stream over ``alphabet``; ValueError where the stream is
    not one (wrong length, a code no symbol has, blocks that do not end where the next begins)."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    blocks = -(-count // BLOCK)
    head = alphabet + 2 * (blocks - 1)
    if len(data) < head:
        raise ValueError(f"a Huffman stream of {count} symbols needs at least {head} bytes, it has {len(data)}")
    lengths = np.frombuffer(data, dtype=np.uint8, count=alphabet).astype(np.int64)
    width = int(lengths.max())
    if width == 0 or width > MAX_LENGTH or (lengths > 0).sum() > 1 << width:
        raise ValueError("the Huffman stream's code lengths are not a code")
    codes = canonical_codes(lengths)
    present = np.lexsort((np.arange(alphabet), lengths))
    present = present[lengths[present] > 0]
    spans = 1 << (width - lengths[present])
    if spans.sum() > 1 << width:
        raise ValueError("the Huffman stream's code lengths are not a prefix code")
    fill = (1 << width) - int(spans.sum())
    table_symbol = np.concatenate([np.repeat(present, spans), np.full(fill, -1)])
    table_length = np.concatenate([np.repeat(lengths[present], spans), np.zeros(fill, dtype=np.int64)])
    payload = data[head:]
    total_bits = 8 * len(payload)
    block_bits = np.frombuffer(data, dtype="<u2", count=blocks - 1, offset=alphabet).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(block_bits)])
    if starts[-1] > total_bits:
        raise ValueError("the Huffman stream is shorter than its blocks")
    window = bits.windows(payload, width, total_bits)
    out = np.empty((blocks, BLOCK), dtype=np.int64)
    position = starts.copy()
    last = count - (blocks - 1) * BLOCK          # symbols in the last block
    for j in range(min(count, BLOCK)):      # every block one symbol further per step
        w = window[np.minimum(position, total_bits - 1)]
        out[:, j] = table_symbol[w]
        position += table_length[w]
        if j == last - 1:
            end = int(position[-1])
    symbols = out.reshape(-1)[:count]
    if ((symbols < 0).any() or not np.array_equal(position[:-1], starts[1:])
            or not total_bits - 8 < end <= total_bits):
        raise ValueError("the Huffman stream does not decode to its symbols")
    return symbols
