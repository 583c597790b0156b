"""What an exchange costs: bytes on the wire per worker for each collective (ring algorithms), pure Python so a
what-if question needs no torch."""


def ring_allreduce_bytes(workers, nbytes):
    """Bytes each worker sends in a ring allreduce of an ``nbytes`` tensor: 2 (N - 1) / N of it
    (reduce-scatter, then allgather)."""
    return 2 * (workers - 1) * nbytes / workers


def ring_allgather_bytes(workers, nbytes):
    """Bytes each worker sends in a ring allgather of an ``nbytes`` row per worker: N - 1 rows."""
    return (workers - 1) * nbytes


def sparse_is_larger(workers, row_bytes, numel, dense_itemsize=4):
    """Whether an allgather of ``row_bytes`` of pairs per worker moves more bytes than an allreduce of the
    ``numel``-element selection sent densely (zeros elsewhere, ``dense_itemsize`` bytes per value): the
    sparse/dense switch's rule (SparCML, SC'19), decided alike on every rank from sizes alone."""
    return workers > 1 and ring_allgather_bytes(workers, row_bytes) > ring_allreduce_bytes(workers, numel * dense_itemsize)
