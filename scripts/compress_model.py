"""Compress a trained model for storage and shipping (dgc/storage: Deep Compression's pruning, weight sharing
and Huffman coding; low rank; int8) into one self-describing, checksummed file, and print what each tensor
became.

    .venv/bin/python scripts/compress_model.py runs/digits.DigitsNet.np2 --out digits.dgcz \\
        [--prune 0.9] [--prune-scope layer|global] [--bits 5] [--huffman] [--low-rank R] [--int8] [--force]
    .venv/bin/python train.py --configs configs/digits/digitsnet.py --evaluate --checkpoint digits.dgcz

The input is a run directory (its checkpoints/checkpoint.pt), a train.py checkpoint file, or a file of
``torch.save(model.state_dict())``. Biases and BatchNorm are kept as they are; only weights of two or more
dimensions are compressed. ``--low-rank``: an int is the rank of every factorised weight, a float in (0, 1)
the fraction of its singular values' energy kept.
"""
import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a run directory, a train.py checkpoint or a torch.save'd state dict")
    parser.add_argument("--out", required=True, help="the compressed file to write")
    parser.add_argument("--prune", type=float, default=0.0, help="fraction of the smallest weights removed")
    parser.add_argument("--prune-scope", default="layer", help="layer (each tensor) or global (one threshold)")
    parser.add_argument("--bits", type=int, help="k-means weight sharing to 2**bits centroids per tensor")
    parser.add_argument("--huffman", action="store_true", help="Huffman-code the gaps and codes")
    parser.add_argument("--low-rank", type=rank_or_energy, help="truncated SVD: a rank, or an energy fraction")
    parser.add_argument("--int8", action="store_true", help="int8 per output channel")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--every-tensor", action="store_true", help="a table row for every tensor kept as it is")
    return parser.parse_args(argv)


def rank_or_energy(text):
    """``--low-rank``'s value: an int rank or a float energy fraction."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a rank (e.g. 8) or an energy fraction (e.g. 0.9)")


def read_source(path):
    """``(state dict, config text or None, source description)`` of a run directory or checkpoint file."""
    import torch

    from dgc import storage
    from training import checkpoint as ckpt

    path = pathlib.Path(path)
    if path.is_dir():
        path = path / "checkpoints" / "checkpoint.pt"
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint (give a run directory or a checkpoint file)")
    if storage.is_compressed(path):
        state, header = storage.load(path)
        return state, header.get("config"), {"file": str(path), "compressed": True}
    loaded = ckpt.load(path)    # checks a train.py checkpoint's checksum; a plain torch.save file loads too
    if isinstance(loaded, dict) and "model" in loaded:
        return loaded["model"], loaded.get("config"), {"file": str(path), "epoch": loaded.get("epoch")}
    if isinstance(loaded, dict) and loaded and all(isinstance(v, torch.Tensor) for v in loaded.values()):
        return loaded, None, {"file": str(path)}
    raise ValueError(f"{path}: holds no model state (expected a train.py checkpoint or a state dict)")


def rows(state, header, every_tensor=False):
    """The table's rows ``(name, shape, dense bytes, stored bytes, encoding)``: one per compressed weight (and
    per kept tensor with ``every_tensor``; else one row for all of them), the header's, and the total."""
    from dgc import storage
    from dgc.storage.format import header_bytes

    lengths = [s["length"] for s in header["streams"]]
    table, kept = [], []
    for entry in header["tensors"]:
        tensor = state[entry["name"]]
        row = (entry["name"], "x".join(map(str, entry["shape"])) or "scalar", tensor.numel() * tensor.element_size(),
               sum(lengths[i] for i in storage.stream_indices(entry)), storage.describe(entry))
        (table if entry["layout"] != "raw" or every_tensor else kept).append(row)
    if kept:
        table.append((f"{len(kept)} other tensors", "", sum(r[2] for r in kept), sum(r[3] for r in kept),
                      "raw: biases, BatchNorm, counters"))
    table.append(("(header, checksum)", "", 0, header_bytes(header), "zlib'd JSON header, SHA-256"))
    table.append(("total", "", sum(r[2] for r in table), sum(r[3] for r in table), ""))
    return table


def print_table(table):
    widths = [max(len(str(r[i])) for r in table + [HEAD]) for i in range(2)]
    print(f"{HEAD[0]:<{widths[0]}}  {HEAD[1]:<{widths[1]}}  {'dense bytes':>11}  {'stored bytes':>12}  "
          f"{'ratio':>7}  encoding")
    for name, shape, dense, stored, encoding in table:
        ratio = f"{dense / stored:.2f}x" if dense and stored else ""
        print(f"{name:<{widths[0]}}  {shape:<{widths[1]}}  {dense or '':>11}  {stored:>12}  {ratio:>7}  {encoding}")


HEAD = ("tensor", "shape")


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from dgc import storage
    from training.checkpoint import CorruptCheckpoint

    options = storage.Options(prune=args.prune, prune_scope=args.prune_scope, bits=args.bits,
                              huffman=args.huffman, low_rank=args.low_rank, int8=args.int8)
    out = pathlib.Path(args.out)
    try:
        options.check()
        if out.is_dir():
            raise ValueError(f"--out {out} is a directory; give a file name")
        if out.exists() and not args.force:
            raise ValueError(f"--out {out} exists; pass --force to replace it (nothing was written)")
        if not out.parent.is_dir():
            raise ValueError(f"--out {out}: no folder {out.parent}")
        state, config, source = read_source(args.source)
        if out.exists() and out.resolve() == pathlib.Path(source["file"]).resolve():
            raise ValueError(f"--out {out} is the source file itself; write elsewhere")
    except (ValueError, storage.StorageError, CorruptCheckpoint) as error:
        print(f"compress_model.py: error: {error}", file=sys.stderr)
        return 2
    header = storage.save(out, state, options, config=config, source=source)
    size = out.stat().st_size
    table = rows(state, header, args.every_tensor)
    print_table(table)
    dense = table[-1][2]
    print(f"wrote {out}: {size} bytes, {dense / size:.2f}x smaller than the {dense} bytes of dense weights")
    return 0


if __name__ == "__main__":
    sys.exit(main())
