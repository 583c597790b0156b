"""Smoke test of scripts/bench_compression.py --breakdown: the compress side's per-operator profile names
the compensation's, the clipping's, the scan's and the trim's operators, and adds up to no more than the call."""
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
    copy_ms, start_ms = (float(v) for v in re.search(r"copy_ ([\d.]+) ms; Exchange.start ([\d.]+) ms", out).groups())
    assert 0 < copy_ms < start_ms
    rows = {cells[0]: (float(cells[1]), float(cells[2])) for cells in
            (line.strip("| ").split(" | ") for line in out.splitlines() if line.startswith("| aten::"))}
    for op in ("aten::add", "aten::linalg_vector_norm", "aten::abs", "aten::topk"):   # compensate, clip, scan, trim
        assert rows[op][0] >= 1
    assert sum(ms for _, ms in rows.values()) <= start_ms * 1.5

