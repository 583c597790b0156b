"""Model compression for storage (dgc/storage, scripts/compress_model.py): every coding round-trips exactly,
the file's checksum and structure refuse damage, sizes reported are the file's, bad arguments are named, and
train.py evaluates a compressed file as the model it stands for."""
import heapq
import json
import re
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
from dgc import storage
from dgc.storage import bits, gaps, huffman, int8, kmeans, lowrank
from dgc.storage.prune import magnitude_masks
from models import DigitsNet, resnet20
from training.checkpoint import atomic_save

sys.path.insert(0, str(ROOT / "scripts"))
import compress_model  # noqa: E402


def trained_like(model, seed=0):
    """``model``'s state with BatchNorm statistics and weights that are not the initial ones (heavy-tailed
    weights, like trained ones; every BatchNorm tensor distinct)."""
    gen = torch.Generator().manual_seed(seed)
    state = model.state_dict()
    for name, t in state.items():
        if t.is_floating_point():
            state[name] = torch.distributions.StudentT(3).sample(t.shape) * 0.05 + 0.01 * torch.rand(t.shape, generator=gen)
        elif t.dim() == 0:
            state[name] = torch.tensor(1234, dtype=t.dtype)
    state = {k: (v.abs() + 0.1 if k.endswith("running_var") else v) for k, v in state.items()}
    return state


# --- bit streams, Huffman, gaps ---------------------------------------------------------------------------

def test_pack_writes_each_code_msb_first_in_its_length():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 17, 500)
    codes = rng.integers(0, 1 << 16, 500) % (1 << lengths)
    expected = "".join(format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths))
    expected += "0" * (-len(expected) % 8)
    data = bits.pack(codes, lengths)
    assert "".join(format(b, "08b") for b in data) == expected
    for width in (1, 3, 5, 8, 13):
        fixed = rng.integers(0, 1 << width, 777)
        assert np.array_equal(bits.unpack_fixed(bits.pack(fixed, width), width, 777), fixed)
    with pytest.raises(ValueError, match="does not fit"):
        bits.pack([4], 2)


def huffman_cost(counts):
    """Total bits of an optimal prefix code: the sum of the merged weights (independent of dgc.storage)."""
    heap = [int(c) for c in counts if c]
    if len(heap) == 1:
        return heap[0]
    heapq.heapify(heap)
    total = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        total += merged
        heapq.heappush(heap, merged)
    return total


@pytest.mark.parametrize("count", [1, 5, 1023, 1024, 1025, 5000])
def test_huffman_round_trips_and_is_optimal(count):
    rng = np.random.default_rng(count)
    symbols = np.minimum(rng.geometric(0.25, count) - 1, 31)
    data = huffman.encode(symbols, 32)
    assert np.array_equal(huffman.decode(data, count, 32), symbols)
    counts = np.bincount(symbols, minlength=32)
    assert len(data) == huffman.encoded_size(counts)
    lengths = huffman.code_lengths(counts)
    assert (counts * lengths).sum() == huffman_cost(counts)
    codes = huffman.canonical_codes(lengths)
    words = sorted(format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths) if n)
    assert not any(b.startswith(a) for a, b in zip(words, words[1:]))     # a prefix code


def test_huffman_limits_code_lengths_and_still_decodes():
    fib = [1, 1]
    while len(fib) < 25:
        fib.append(fib[-1] + fib[-2])
    symbols = np.repeat(np.arange(25), fib)          # the optimal code needs 24 bits
    counts = np.bincount(symbols)
    assert huffman.code_lengths(counts, max_length=64).max() == 24
    assert huffman.code_lengths(counts).max() <= huffman.MAX_LENGTH
    data = huffman.encode(symbols, 32)
    assert np.array_equal(huffman.decode(data, symbols.size, 32), symbols)
    single = np.full(10, 3)
    assert np.array_equal(huffman.decode(huffman.encode(single, 4), 10, 4), single)


def test_huffman_refuses_a_stream_that_is_not_one():
    symbols = np.arange(3000) % 7
    data = huffman.encode(symbols, 8)
    with pytest.raises(ValueError):
        huffman.decode(data[:-50], 3000, 8)
    with pytest.raises(ValueError):
        huffman.decode(data, 3000 + huffman.BLOCK, 8)


def test_gaps_use_escapes_for_long_gaps():
    assert gaps.encode(np.array([0, 1, 20]), 2).tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 1]
    rng = np.random.default_rng(3)
    for density in (0.5, 0.05, 0.001):
        positions = np.flatnonzero(rng.random(50_000) < density)
        for width in (1, 2, 4, 8):
            symbols = gaps.encode(positions, width)
            assert np.array_equal(gaps.decode(symbols, width), positions)
            assert np.array_equal(gaps.symbol_counts(positions, width), np.bincount(symbols, minlength=1 << width))
    assert gaps.decode(gaps.encode(np.array([], dtype=np.int64), 3), 3).size == 0
    with pytest.raises(ValueError, match="strictly increasing"):
        gaps.encode(np.array([3, 3]), 2)


# --- value codings and pruning -----------------------------------------------------------------------------

def test_kmeans_codes_point_at_the_nearest_stored_centroid():
    values = torch.distributions.StudentT(3).sample((20_000,)) * 0.05
    for width in (2, 4, 5):
        codebook, codes = kmeans.cluster(values, width)
        assert codebook.dtype == torch.float16 and codebook.numel() <= 1 << width
        assert torch.all(codebook[1:] > codebook[:-1])
        distance = (values[:, None] - codebook.float()[None]).abs()
        chosen = distance.gather(1, codes[:, None]).squeeze(1)
        assert torch.all(chosen <= distance.min(1).values + 1e-7)
    linear = torch.linspace(values.min().item(), values.max().item(), 16)     # the initialisation alone
    sse_linear = (values - linear[(values[:, None] - linear).abs().argmin(1)]).pow(2).sum()
    codebook, codes = kmeans.cluster(values, 4)
    assert (values - codebook.float()[codes]).pow(2).sum() < 0.5 * sse_linear      # Lloyd's steps pay
    levels = torch.arange(-4, 4) * 0.125 + 0.25          # fp16-exact levels, as many as centroids
    exact = levels[torch.randint(0, 8, (1000,))]
    codebook, codes = kmeans.cluster(exact, 3)
    assert torch.equal(codebook.float()[codes], exact)


def test_int8_per_channel_error_is_half_a_step():
    weight = torch.randn(8, 4, 3, 3) * torch.logspace(-3, 0, 8)[:, None, None, None]
    weight[2] = 0
    rows = torch.arange(weight.numel()) // 36
    scales, codes = int8.quantize(weight.reshape(-1), rows, 8)
    restored = int8.dequantize(scales, codes, rows).reshape(weight.shape)
    assert torch.all((restored - weight).abs() <= scales[:, None, None, None] / 2 + 1e-7)
    assert torch.equal(restored[2], weight[2]) and codes.abs().max() == 127


def test_low_rank_by_rank_and_by_energy():
    left, right = torch.randn(64, 4), torch.randn(4, 288)
    weight = (left @ right).reshape(64, 32, 3, 3)
    a, b = lowrank.factor(weight, 4)
    assert a.shape == (64, 4) and torch.allclose(a @ b, weight.reshape(64, -1), atol=1e-4)
    a, b = lowrank.factor(weight, 0.999)
    assert a.shape[1] == 4
    assert lowrank.factor(torch.randn(8, 8), 7) is None       # 7 * 16 > 64: not smaller


def test_magnitude_masks_layer_and_global():
    weights = {"a": torch.randn(50, 20), "b": torch.randn(30, 10) * 10}
    layer = magnitude_masks(weights, 0.8, "layer")
    assert [int((~m).sum()) for m in layer.values()] == [800, 240]
    glob = magnitude_masks(weights, 0.8, "global")
    assert sum(int((~m).sum()) for m in glob.values()) == round(0.8 * 1300)
    kept = torch.cat([w[m].abs() for w, m in zip(weights.values(), glob.values())])
    pruned = torch.cat([w[~m].abs() for w, m in zip(weights.values(), glob.values())])
    assert kept.min() >= pruned.max()                         # one threshold over both
    assert (~glob["b"]).float().mean() < (~glob["a"]).float().mean()
    with pytest.raises(ValueError, match="'channel'"):
        magnitude_masks(weights, 0.5, "channel")


# --- the file ----------------------------------------------------------------------------------------------

OPTION_SETS = {
    "fp32": storage.Options(),
    "int8": storage.Options(int8=True),
    "int8+huffman": storage.Options(int8=True, huffman=True),
    "prune90": storage.Options(prune=0.9),
    "prune80-global": storage.Options(prune=0.8, prune_scope="global"),
    "kmeans4": storage.Options(bits=4),
    "prune80+kmeans5+huffman": storage.Options(prune=0.8, bits=5, huffman=True),
    "lowrank8": storage.Options(low_rank=8),
    "lowrank0.8+int8": storage.Options(low_rank=0.8, int8=True),
}


@pytest.mark.parametrize("name", OPTION_SETS)
def test_file_round_trip_keeps_what_each_coding_promises(name):
    options = OPTION_SETS[name]
    state = trained_like(resnet20(num_classes=10))
    data, header = storage.pack(state, options, config="model: resnet20", source={"file": "x"})
    decoded, read_header = storage.unpack(data)
    assert read_header["config"] == "model: resnet20" and list(decoded) == list(state)
    for key, tensor in state.items():
        out = decoded[key]
        assert out.dtype == tensor.dtype and out.shape == tensor.shape, key
        if not storage.compressible(tensor):
            assert torch.equal(out, tensor), key        # biases, BatchNorm, counters: exactly
    weights = {k: v for k, v in state.items() if storage.compressible(v)}
    masks = magnitude_masks(weights, options.prune, options.prune_scope) if options.prune else {}
    for key, w in weights.items():
        out = decoded[key]
        if options.prune:
            assert torch.equal(out != 0, masks[key]), key
        if options == storage.Options() or (options.prune and options.bits is None):
            assert torch.equal(out[out != 0], w[out != 0]), key     # kept values exactly
        if options.int8 and options.low_rank is None:
            step = w.reshape(w.shape[0], -1).abs().amax(1) / 127
            assert torch.all((out - w).reshape(w.shape[0], -1).abs() <= step[:, None] / 2 + 1e-6), key
        if options.bits:
            assert out.unique().numel() <= (1 << options.bits) + 1, key    # shared values (and zero)
    if options == storage.Options():
        assert len(data) > sum(t.numel() * t.element_size() for t in state.values())
        other = {"w64": torch.randn(5, 7, dtype=torch.float64), "wbf16": torch.randn(4, 3).bfloat16(),
                 "sparse64": torch.randn(40, 9, dtype=torch.float64) * (torch.rand(40, 9) < 0.05)}
        decoded = storage.unpack(storage.pack(other, options)[0])[0]
        assert all(torch.equal(decoded[k], v) and decoded[k].dtype == v.dtype for k, v in other.items())


def test_every_flipped_byte_and_truncation_is_refused(tmp_path):
    state = trained_like(DigitsNet(num_classes=10))
    data, _ = storage.pack(state, storage.Options(prune=0.8, bits=4, huffman=True))
    rng = np.random.default_rng(0)
    for position in [0, 9, 15, 20, len(data) // 2, len(data) - 40, len(data) - 1, *rng.integers(0, len(data), 20)]:
        damaged = bytearray(data)
        damaged[position] ^= 0x10
        with pytest.raises(storage.StorageError, match="model.dgcz"):
            storage.unpack(bytes(damaged), "model.dgcz")
    for length in (0, 10, 100, len(data) - 1):
        with pytest.raises(storage.StorageError, match="truncated|not a compressed model"):
            storage.unpack(data[:length], "model.dgcz")
    path = tmp_path / "m.dgcz"
    path.write_bytes(data[:-1])
    with pytest.raises(storage.StorageError, match=str(path)):
        storage.load(path)


def test_another_format_version_is_named():
    import hashlib
    import struct
    data, _ = storage.pack({"w": torch.ones(3)}, storage.Options())
    body = bytearray(data[:-32])
    struct.pack_into("<I", body, 8, 99)
    with pytest.raises(storage.StorageError, match="format version 99"):
        storage.unpack(bytes(body) + hashlib.sha256(body).digest())


# --- scripts/compress_model.py and train.py --evaluate --------------------------------------------------------

def write_checkpoint(path, state):
    """A checkpoint as train.py writes it (training/checkpoint.py: checksummed, with the config text)."""
    atomic_save({"epoch": 3, "config": "model: DigitsNet", "model": state, "optimizer": {}, "history": []}, path)


def test_compress_model_table_totals_the_file(tmp_path, capsys):
    ckpt = tmp_path / "run" / "checkpoints" / "checkpoint.pt"
    state = trained_like(DigitsNet(num_classes=10))
    write_checkpoint(ckpt, state)
    out = tmp_path / "m.dgcz"
    assert compress_model.main([str(tmp_path / "run"), "--out", str(out), "--prune", "0.9", "--bits", "5",
                                "--huffman"]) == 0
    lines = capsys.readouterr().out.splitlines()
    total = next(line for line in lines if line.startswith("total")).split()
    dense = sum(t.numel() * t.element_size() for t in state.values())
    assert int(total[1]) == dense and int(total[2]) == out.stat().st_size
    rows = [line for line in lines if line.split()[0] in state]
    assert {line.split()[0] for line in rows} == {k for k, v in state.items() if storage.compressible(v)}
    assert all(re.search(r"sparse (9.9|10.0|10.1)% kept, gaps \db huffman; kmeans 5b huffman", line) for line in rows)
    decoded, header = storage.load(out)
    assert header["config"] == "model: DigitsNet" and header["source"]["epoch"] == 3
    assert float(total[3].rstrip("x")) == pytest.approx(dense / out.stat().st_size, abs=0.01)


@pytest.mark.parametrize("args,message", [
    (["--prune", "1.5"], r"--prune 1.5: expected a fraction in \[0, 1\)"),
    (["--bits", "9"], "--bits 9: expected 1 to 8"),
    (["--bits", "4", "--int8"], "--bits and --int8 both quantize"),
    (["--low-rank", "4", "--prune", "0.5"], "--low-rank and --prune both remove"),
    (["--low-rank", "1.5"], "--low-rank 1.5: expected a rank >= 1 or an energy fraction"),
    (["--prune", "0.5", "--prune-scope", "channel"], "--prune-scope 'channel'"),
])
def test_compress_model_bad_arguments_are_named(args, message, tmp_path, capsys):
    ckpt = tmp_path / "c.pt"
    write_checkpoint(ckpt, trained_like(DigitsNet(num_classes=10)))
    assert compress_model.main([str(ckpt), "--out", str(tmp_path / "m.dgcz"), *args]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "m.dgcz").exists()


def test_compress_model_never_overwrites_silently(tmp_path, capsys):
    ckpt = tmp_path / "c.pt"
    write_checkpoint(ckpt, trained_like(DigitsNet(num_classes=10)))
    out = tmp_path / "m.dgcz"
    out.write_bytes(b"the user's file")
    assert compress_model.main([str(ckpt), "--out", str(out)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err and out.read_bytes() == b"the user's file"
    assert compress_model.main([str(ckpt), "--out", str(out), "--force"]) == 0
    assert storage.is_compressed(out)
    assert compress_model.main([str(tmp_path / "none"), "--out", str(tmp_path / "n.dgcz")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    broken = tmp_path / "broken.pt"
    broken.write_bytes(ckpt.read_bytes()[:-5])
    assert compress_model.main([str(broken), "--out", str(tmp_path / "n.dgcz")]) == 2
    assert str(broken) in capsys.readouterr().err


def test_train_evaluates_a_compressed_file_as_the_model_it_stands_for(tmp_path, capsys):
    import train
    from training.config import configs, load_configs
    from training.data import digits

    state = trained_like(DigitsNet(num_classes=10))
    state = {k: (v * 4 if k == "classifier.4.weight" else v) for k, v in state.items()}
    out = tmp_path / "m.dgcz"
    storage.save(out, state, storage.Options(huffman=True))
    model = DigitsNet(num_classes=10)
    model.load_state_dict(state)
    model.eval()
    test = digits(test_fraction=0.2, seed=0)["test"]
    x = torch.stack([test[i][0] for i in range(len(test))])
    y = torch.tensor([test[i][1] for i in range(len(test))])
    with torch.no_grad():
        expected = 100 * (model(x).argmax(1) == y).float().mean().item()
    result = run_evaluate(["--configs", "configs/digits/digitsnet.py", "--evaluate", "--checkpoint", str(out),
                           "--run-dir", str(tmp_path / "run")])
    assert result.returncode == 0, result.stderr
    top1 = float(result.stdout.split("test_top1=")[1].split()[0])
    assert top1 == pytest.approx(expected, abs=1e-3)

    damaged = tmp_path / "damaged.dgcz"
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 1
    damaged.write_bytes(bytes(data))
    for path, message in [(damaged, f"{damaged}: checksum mismatch"), (tmp_path / "none.dgcz", "no checkpoint at")]:
        assert train.main(["--configs", "configs/digits/digitsnet.py", "--evaluate", "--checkpoint", str(path)]) == 2
        assert message in capsys.readouterr().err
    other = tmp_path / "other.dgcz"
    storage.save(other, trained_like(resnet20(num_classes=10)), storage.Options())
    assert train.main(["--configs", "configs/digits/digitsnet.py", "--evaluate", "--checkpoint", str(other)]) == 2
    assert "holds another model than the configs' DigitsNet" in capsys.readouterr().err
    del configs, load_configs


def run_evaluate(args):
    import subprocess
    import os
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
