"""A state dict to and from streams of bytes: the per-tensor encodings of :mod:`dgc.storage`.

Floating tensors of two or more dimensions (convolution and linear weights) are compressed; every other
entry (biases, BatchNorm parameters and statistics, counters) is kept as it is. A compressed weight is

- ``lowrank``: two factors (:mod:`~dgc.storage.lowrank`), each a dense tensor of its own;
- ``sparse``: its kept positions as relative gaps (:mod:`~dgc.storage.gaps`) and their values, where the
  tensor has zeros (pruned, or before) and that is smaller than dense;
- ``dense``: every value;

and values are fp32 (the tensor's dtype), int8 per output channel, or k-means codes with an fp16 codebook;
gaps, int8 codes and k-means codes are fixed-width bit-packed or Huffman-coded. Each entry describes its
streams (kind, count, width, coding) so the file alone decodes.
"""
from dataclasses import asdict, dataclass
from typing import Optional, Union

import numpy as np
import torch

from dgc.storage import bits as bitstream
from dgc.storage import gaps, huffman, int8, kmeans, lowrank
from dgc.storage.prune import magnitude_masks


@dataclass
class Options:
    """What to do to the compressible weights (all off: every tensor kept exactly)."""
    prune: float = 0.0                  # fraction of the smallest magnitudes removed
    prune_scope: str = "layer"          # "layer": per tensor; "global": one threshold over all
    bits: Optional[int] = None          # k-means weight sharing to 2**bits fp16 centroids per tensor
    huffman: bool = False               # Huffman-code the gaps and the codes
    low_rank: Optional[Union[int, float]] = None    # an int rank per tensor, or a float energy fraction
    int8: bool = False                  # int8 per output channel

    def check(self):
        """Raise ValueError naming the first bad option."""
        if not 0 <= self.prune < 1:
            raise ValueError(f"--prune {self.prune}: expected a fraction in [0, 1), e.g. 0.9")
        if self.prune_scope not in ("layer", "global"):
            raise ValueError(f"--prune-scope {self.prune_scope!r}: expected 'layer' or 'global'")
        if self.bits is not None and not 1 <= self.bits <= 8:
            raise ValueError(f"--bits {self.bits}: expected 1 to 8 bits per shared weight")
        if self.bits is not None and self.int8:
            raise ValueError("--bits and --int8 both quantize the values: choose one")
        if self.low_rank is not None:
            if isinstance(self.low_rank, float) and not 0 < self.low_rank < 1:
                raise ValueError(f"--low-rank {self.low_rank}: expected a rank >= 1 or an energy fraction in (0, 1)")
            if isinstance(self.low_rank, int) and self.low_rank < 1:
                raise ValueError(f"--low-rank {self.low_rank}: expected a rank >= 1 or an energy fraction in (0, 1)")
            if self.prune:
                raise ValueError("--low-rank and --prune both remove weights: choose one")

    def as_dict(self):
        return asdict(self)


def compressible(tensor):
    """Whether a state entry is a weight the options apply to (floating, two or more dimensions)."""
    return tensor.is_floating_point() and tensor.dim() >= 2


def encode_state(state, options):
    """``(entries, blobs)``: one JSON-able description per entry of ``state`` (in order) whose streams are
    the byte strings of ``blobs`` (in order; an entry's ``streams`` name their index)."""
    options.check()
    state = {name: t.detach().cpu() for name, t in state.items()}
    weights = {name: t for name, t in state.items() if compressible(t)}
    masks = magnitude_masks(weights, options.prune, options.prune_scope) if options.prune else {}
    entries, blobs = [], []
    for name, tensor in state.items():
        if name not in weights:
            entry = {"layout": "raw", "streams": [_raw(tensor, blobs)]}
        else:
            entry = _encode_weight(tensor, masks.get(name), options, blobs)
        entries.append({"name": name, "shape": list(tensor.shape), "dtype": _dtype_name(tensor.dtype), **entry})
    return entries, blobs


def decode_state(entries, blobs):
    """The state dict ``entries`` and their ``blobs`` describe (``blobs[i]``: stream i's bytes)."""
    state = {}
    for entry in entries:
        dtype = getattr(torch, entry["dtype"])
        shape = tuple(entry["shape"])
        layout = entry["layout"]
        if layout == "raw":
            tensor = _read_raw(entry["streams"][0], blobs).reshape(shape)
        elif layout == "dense":
            numel = int(np.prod(shape))
            tensor = _decode_values(entry["values"], blobs, torch.arange(numel) // _row_size(shape), shape[0])
            tensor = tensor.reshape(shape)
        elif layout == "sparse":
            numel = int(np.prod(shape))
            gap = entry["positions"]
            positions = torch.from_numpy(gaps.decode(_read_symbols(gap, blobs), gap["bits"]))
            if positions.numel() != entry["kept"] or (positions.numel() and positions[-1] >= numel):
                raise ValueError(f"{entry['name']}: the positions do not match the tensor")
            values = _decode_values(entry["values"], blobs, positions // _row_size(shape), shape[0])
            tensor = torch.zeros(numel, dtype=values.dtype).index_put_((positions,), values).reshape(shape)
        elif layout == "lowrank":
            left, right = (_decode_values(f["values"], blobs, torch.arange(int(np.prod(f["shape"]))) // f["shape"][1],
                                          f["shape"][0]).reshape(f["shape"]) for f in entry["factors"])
            tensor = (left @ right).reshape(shape)
        else:
            raise ValueError(f"{entry['name']}: unknown layout {layout!r}")
        state[entry["name"]] = tensor.to(dtype)
    return state


def describe(entry):
    """One line saying how an entry is stored, e.g. ``sparse 10.0%: gaps 4b huffman; kmeans 5b huffman``."""
    layout = entry["layout"]
    if layout == "raw":
        return f"raw {entry['dtype']}"
    if layout == "lowrank":
        factor = entry["factors"][0]
        return f"low rank {factor['shape'][1]}: {_describe_values(factor['values'])}"
    text = _describe_values(entry["values"])
    if layout == "sparse":
        gap = entry["positions"]
        kept = 100 * entry["kept"] / max(int(np.prod(entry["shape"])), 1)
        return f"sparse {kept:.1f}% kept, gaps {gap['bits']}b {gap['coding']}; {text}"
    return f"dense; {text}"


def stream_indices(entry):
    """The blob indices of every stream of ``entry`` (to total its bytes)."""
    found = []

    def walk(node):
        if isinstance(node, dict):
            if "blob" in node:
                found.append(node["blob"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(entry)
    return found


def _encode_weight(tensor, mask, options, blobs):
    """The entry of one compressible weight: the smallest of the layouts the options allow."""
    shape = tensor.shape
    flat = tensor.reshape(-1)
    if options.low_rank is not None:
        factors = lowrank.factor(tensor, options.low_rank)
        if factors is not None:
            return {"layout": "lowrank", "factors": [
                {"shape": list(f.shape),
                 "values": _encode_values(f.reshape(-1), torch.arange(f.numel()) // f.shape[1], f.shape[0],
                                          options, blobs, tensor.dtype)}
                for f in factors]}
    keep = mask.reshape(-1) if mask is not None else flat != 0
    rows_all = torch.arange(flat.numel()) // _row_size(shape)
    if mask is not None:
        flat = flat * keep
    candidates = []
    if not keep.all():
        positions = torch.nonzero(keep).reshape(-1)
        trial = []
        gap_bits = gaps.best_bits(positions.numpy(), flat.numel(), options.huffman)
        entry = {"layout": "sparse", "kept": int(positions.numel()),
                 "positions": _symbols(gaps.encode(positions.numpy(), gap_bits), gap_bits, options.huffman, trial),
                 "values": _encode_values(flat[positions], rows_all[positions], shape[0], options, trial,
                                          tensor.dtype)}
        candidates.append((entry, trial))
    if mask is None or not candidates:
        trial = []
        entry = {"layout": "dense", "values": _encode_values(flat, rows_all, shape[0], options, trial, tensor.dtype)}
        candidates.append((entry, trial))
    entry, trial = min(candidates, key=lambda c: sum(len(b) for b in c[1]))
    offset = len(blobs)
    blobs.extend(trial)
    return _shift_blobs(entry, offset)


def _encode_values(values, rows, num_rows, options, blobs, dtype):
    """The description of a vector of values (in output channels ``rows``), its streams appended to blobs."""
    if options.bits is not None:
        codebook, codes = kmeans.cluster(values, options.bits)
        return {"coding": "kmeans", "codebook": _raw(codebook, blobs),
                "codes": _symbols(codes.numpy(), options.bits, options.huffman, blobs)}
    if options.int8:
        scales, codes = int8.quantize(values, rows, num_rows)
        return {"coding": "int8", "scales": _raw(scales, blobs),
                "codes": _symbols(codes.numpy().astype(np.int64) + 128, 8, options.huffman, blobs)}
    return {"coding": "raw", "raw": _raw(values.to(dtype), blobs)}


def _decode_values(node, blobs, rows, num_rows):
    coding = node["coding"]
    if coding == "kmeans":
        codebook = _read_raw(node["codebook"], blobs).float()
        codes = torch.from_numpy(_read_symbols(node["codes"], blobs))
        if codes.numel() and codes.max() >= codebook.numel():
            raise ValueError("a k-means code has no centroid")
        return codebook[codes]
    if coding == "int8":
        scales = _read_raw(node["scales"], blobs)
        codes = torch.from_numpy(_read_symbols(node["codes"], blobs) - 128).to(torch.int8)
        if scales.numel() != num_rows:
            raise ValueError("int8 scales do not match the output channels")
        return int8.dequantize(scales, codes, rows)
    if coding == "raw":
        return _read_raw(node["raw"], blobs)
    raise ValueError(f"unknown value coding {coding!r}")


def _describe_values(node):
    coding = node["coding"]
    if coding == "kmeans":
        return (f"kmeans {node['codes']['bits']}b {node['codes']['coding']} "
                f"({node['codebook']['count']} fp16 centroids)")
    if coding == "int8":
        return f"int8/channel {node['codes']['coding']}"
    return node["raw"]["dtype"]


def _raw(tensor, blobs):
    tensor = tensor.detach().cpu().contiguous().reshape(-1)
    blobs.append(tensor.view(torch.uint8).numpy().tobytes())
    return {"blob": len(blobs) - 1, "kind": "raw", "dtype": _dtype_name(tensor.dtype), "count": tensor.numel()}


def _read_raw(node, blobs):
    dtype = getattr(torch, node["dtype"])
    data = blobs[node["blob"]]
    size = torch.empty(0, dtype=dtype).element_size()
    if len(data) != node["count"] * size:
        raise ValueError(f"a raw stream of {node['count']} {node['dtype']} values has {len(data)} bytes")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).clone() if data else torch.zeros(0, dtype=dtype)


def _symbols(symbols, width, entropy_coded, blobs):
    symbols = np.asarray(symbols, dtype=np.int64)
    if entropy_coded:
        blobs.append(huffman.encode(symbols, 1 << width))
    else:
        blobs.append(bitstream.pack(symbols, width))
    return {"blob": len(blobs) - 1, "kind": "symbols", "bits": width, "count": int(symbols.size),
            "coding": "huffman" if entropy_coded else "fixed"}


def _read_symbols(node, blobs):
    data = blobs[node["blob"]]
    if node["coding"] == "huffman":
        return huffman.decode(data, node["count"], 1 << node["bits"])
    if node["coding"] == "fixed":
        return bitstream.unpack_fixed(data, node["bits"], node["count"])
    raise ValueError(f"unknown symbol coding {node['coding']!r}")


def _shift_blobs(node, offset):
    """``node`` with every blob index moved by ``offset`` (a candidate's streams join the file's)."""
    if isinstance(node, dict):
        return {k: (v + offset if k == "blob" else _shift_blobs(v, offset)) for k, v in node.items()}
    if isinstance(node, list):
        return [_shift_blobs(v, offset) for v in node]
    return node


def _row_size(shape):
    return int(np.prod(shape[1:])) if len(shape) > 1 else 1


def _dtype_name(dtype):
    return str(dtype).removeprefix("torch.")
