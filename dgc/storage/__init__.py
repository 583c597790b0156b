"""Model compression for storage and shipping (Deep Compression, Han, Mao and Dally, ICLR 2016): magnitude
pruning with relative-index gaps, k-means weight sharing, Huffman coding, low rank, int8; independent of the
gradient exchange.

dgc.storage.format   the checksummed, self-describing file (pack/save, unpack/load)
dgc.storage.encode   a state dict to streams and back: per-tensor layouts and value codings (Options)
dgc.storage.prune, kmeans, int8, lowrank, gaps, huffman, bits   one technique each
"""
from dgc.storage.encode import Options, compressible, describe, stream_indices
from dgc.storage.format import StorageError, is_compressed, load, pack, save, unpack

__all__ = ["Options", "StorageError", "compressible", "describe", "is_compressed", "load", "pack", "save",
           "stream_indices", "unpack"]
