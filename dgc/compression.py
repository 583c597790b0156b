"""The reference implementation's import path: ``from dgc.compression import DGCCompressor``.

The compressors live one per file in :mod:`dgc.compressors`; this module re-exports the documented names.
"""
from dgc.compressors.base import Compressor, Payload, Sparse
from dgc.compressors.dgc import DGCCompressor

__all__ = ["Compressor", "DGCCompressor", "Payload", "Sparse"]
