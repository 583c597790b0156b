"""Smoke test of scripts/bench_compression.py --breakdown: the compress side's per-operator profile names
the compensation's, the clipping's, the scan's and the trim's operators (no timing is asserted: timings
belong to the script's printed ratios, not to a test on a shared machine)."""
import re
import subprocess
import sys

from conftest import ROOT


def bench(*args):
    result = subprocess.run([sys.executable, "scripts/bench_compression.py", *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_breakdown_lists_the_compress_sides_operators():
    out = bench("--breakdown", "16", "--repeats", "3")
    assert re.search(r"2\^16 elements: copy_ [\d.]+ ms; Exchange.start [\d.]+ ms", out), out[:2000]
    rows = {cells[0]: float(cells[1]) for cells in
            (line.strip("| ").split(" | ") for line in out.splitlines() if line.startswith("| aten::"))}
    for op in ("aten::add", "aten::linalg_vector_norm", "aten::abs", "aten::topk"):   # compensate, clip, scan, trim
        assert rows[op] >= 1, (op, rows)
