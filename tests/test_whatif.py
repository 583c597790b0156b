"""scripts/whatif.py from the README's command: its table, crossover and warm-up lines, its plot; bad
arguments named before any model is built."""
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
COMMAND = [sys.executable, str(ROOT / "scripts/whatif.py"), "--model", "resnet50", "--workers", "8,64,256,1024",
           "--link", "10gbit", "--latency", "20us", "--compute-ms", "180", "--methods",
           "dense,fp16,powersgd,dgc,dgc_hier"]


def run(*args):
    return subprocess.run([*COMMAND, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_readme_command_prints_the_table_and_writes_the_plot(tmp_path):
    plot = tmp_path / "whatif.png"
    result = run("--plot", str(plot))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "resnet50 (161 tensors, 25.6M parameters)" in out
    rows = {}
    for line in out.splitlines():       # the first table's row of each N (the warm-up table's come later)
        if line.startswith("| "):
            rows.setdefault(line.split("|")[1].strip(), line)
    for n in ("8", "64", "256", "1024"):
        cells = rows[n].strip("|").split("|")
        assert len(cells) == 1 + 5 + 4          # N, five methods' s/step, four speed-ups over dense
        assert all(float(c) > 0.18 for c in cells[1:6])     # never faster than the compute alone
    assert "ratio 0.25: from N = 9" in out          # 25%: 4-byte pairs outgrow the allreduce from N = 9
    assert "ratio 0.001: from N = " in out
    assert "slower epochs" in out
    assert "DGC 0.001 as configured: predicted slower than dense fp32 from N = " in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, named", [
    (["--link", "fast"], "--link: 'fast'"), (["--latency", "20 parsecs"], "--latency: '20 parsecs'"),
    (["--workers", "8,x"], "'x' in '8,x'"), (["--methods", "dense,magic"], "'magic' is not a method"),
    (["--compute-ms", "-5"], "--compute-ms: '-5'"), (["--workers", "12"], "--workers 12 is not a multiple"),
])
def test_bad_arguments_are_named(args, named):
    result = run(*args)
    assert result.returncode == 2 and named in result.stderr, result.stderr


def test_unknown_model_is_named():
    result = subprocess.run([sys.executable, str(ROOT / "scripts/whatif.py"), "--model", "nosuchnet",
                             "--compute-ms", "100"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 2 and "'nosuchnet'" in result.stderr, result.stderr


def test_compute_from_a_runs_metrics(tmp_path):
    """The step time of a train.py run: workers x batch over its images/s (epochs after the first)."""
    (tmp_path / "metrics.json").write_text('{"num_workers": 2, "history": [{"images_per_s": 50.0}, '
                                           '{"images_per_s": 256.0}, {"images_per_s": 256.0}]}')
    result = subprocess.run([sys.executable, str(ROOT / "scripts/whatif.py"), "--model", "resnet20", "--workers",
                             "2", "--methods", "dense,dgc", "--compute-from", str(tmp_path), "--plot",
                             str(tmp_path / "p.png")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "compute 1000 ms" in result.stdout
    both = run("--compute-from", str(tmp_path))
    assert both.returncode == 2 and "not allowed with argument --compute-ms" in both.stderr
