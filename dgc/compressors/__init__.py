"""Gradient compressors, one per file; the protocol and the dense default are in :mod:`.base`.

A new compressor is one file here (subclass :class:`Compressor`, or :class:`~.sparse.SparseCompressor`
for a sparsifier) plus one config file that selects it; nothing else changes.
"""
from dgc.compressors.base import Compressor, Payload, Sparse

__all__ = ["Compressor", "Payload", "Sparse"]
