"""The compressed-model file: one self-describing, checksummed file.

Layout: ``MAGIC`` (8 bytes), format version and header length (two uint32, little-endian), the header (UTF-8
JSON, zlib-compressed: its per-tensor descriptions repeat the same keys; it holds the version, source checkpoint, the model's config text, the options, one entry per state tensor with its
layout and streams), the streams' bytes one after another, and the SHA-256 of everything before it. Nothing is
unpickled: a file decodes to tensors only, and a truncated or altered one is refused before any decoding.
"""
import hashlib
import json
import os
import pathlib
import struct
import tempfile
import zlib

from dgc.storage.encode import decode_state, encode_state

MAGIC = b"DGCMODEL"
VERSION = 1
_PREFIX = struct.Struct("<8sII")
_DIGEST = 32


class StorageError(RuntimeError):
    """A compressed-model file is not one, is truncated or altered, or has an unknown version (the message
    names the file)."""


def is_compressed(path):
    """Whether ``path`` starts like a compressed-model file (a training checkpoint does not)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def pack(state, options, config=None, source=None):
    """``(file bytes, header)`` of ``state`` compressed with ``options`` (:class:`~dgc.storage.encode.Options`);
    ``config``: the model's config text, ``source``: where it came from (both kept in the header)."""
    entries, blobs = encode_state(state, options)
    offset = 0
    streams = []
    for blob in blobs:
        streams.append({"offset": offset, "length": len(blob)})
        offset += len(blob)
    header = {"version": VERSION, "source": source, "config": config, "options": options.as_dict(),
              "streams": streams, "tensors": entries}
    text = _header_text(header)
    body = _PREFIX.pack(MAGIC, VERSION, len(text)) + text + b"".join(blobs)
    return body + hashlib.sha256(body).digest(), header


def save(path, state, options, config=None, source=None):
    """Write :func:`pack`'s file to ``path`` atomically (a temporary file beside it, fsynced, renamed);
    return the header."""
    data, header = pack(state, options, config, source)
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)       # an ordinary file's mode, not mkstemp's private one
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return header


def unpack(data, name="the file"):
    """``(state dict, header)`` of a file's bytes ``data``; :class:`StorageError` naming ``name`` otherwise."""
    if len(data) < _PREFIX.size + _DIGEST or data[:len(MAGIC)] != MAGIC:
        raise StorageError(f"{name}: not a compressed model file (expected it to start with {MAGIC.decode()})")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise StorageError(f"{name}: checksum mismatch: the file is truncated or altered")
    _, version, length = _PREFIX.unpack_from(body)
    if version != VERSION:
        raise StorageError(f"{name}: format version {version}; this code reads version {VERSION}")
    try:
        header = json.loads(zlib.decompress(body[_PREFIX.size:_PREFIX.size + length]))
        start = _PREFIX.size + length
        blobs = [body[start + s["offset"]:start + s["offset"] + s["length"]] for s in header["streams"]]
        if start + sum(s["length"] for s in header["streams"]) != len(body):
            raise ValueError("the streams do not fill the file")
        return decode_state(header["tensors"], blobs), header
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RuntimeError, zlib.error) as error:
        raise StorageError(f"{name}: does not decode ({type(error).__name__}: {error})") from None


def load(path):
    """``(state dict, header)`` of the compressed-model file ``path`` (see :func:`unpack`)."""
    try:
        data = pathlib.Path(path).read_bytes()
    except OSError as error:
        raise StorageError(f"{path}: cannot be read ({error.strerror})") from None
    return unpack(data, str(path))


def header_bytes(header):
    """Bytes of the file outside the streams: magic, version, length, header JSON and checksum."""
    return _PREFIX.size + len(_header_text(header)) + _DIGEST


def _header_text(header):
    return zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
