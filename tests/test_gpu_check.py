"""scripts/gpu_check.sh on a CPU machine: its dry run lists every stage with its command and checks what the
stages need (executing nothing, writing nothing); a missing OUTDIR, carried wheel folder or data archive is a
clear error naming it. The stages themselves run only where a GPU is (the script's header says how)."""
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def gpu_check(tmp_path, *args, **env):
    """Run the script with this Python (torch is here) and the carried inputs of ``env`` (default: a folder
    with a tensorboardX wheel and an archive file, stand-ins a dry run only checks for)."""
    wheels, archive = tmp_path / "whl", tmp_path / "cifar10-jpeg.tar.gz"
    wheels.mkdir(exist_ok=True)
    (wheels / "tensorboardx-2.6.5-py3-none-any.whl").write_bytes(b"")
    archive.write_bytes(b"")
    variables = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "GPU_CHECK_WHEELS": str(wheels),
                 "GPU_CHECK_DATA": str(archive), "GPU_CHECK_WORK": str(tmp_path / "work"), **env}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=variables, capture_output=True, text=True,
                          timeout=120)


def test_script_parses_and_passes_shellcheck():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    if shutil.which("shellcheck"):
        result = subprocess.run(["shellcheck", "-S", "warning", str(SCRIPT)], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout


def test_dry_run_lists_every_stage_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    result = gpu_check(tmp_path, "--dry-run", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    text = result.stdout
    stages = [line.split()[2] for line in text.splitlines() if line.startswith("stage ")]
    assert stages == ["env", "install", "data", "tests", "replicas", "input", "bench", "train"], text
    for command in ("pip install -q --no-index --no-deps", "--target", "scripts/get_cifar10.sh",
                    "-m pytest -q -rs -p no:cacheprovider --timeout 120 -k cuda", "tests/test_compression.py",
                    "train.check_replicas_every=1", "scripts/bench_compression.py --device cuda",
                    "torch.distributed.run --standalone --nproc-per-node 2 train.py --backend torch",
                    "train.device=cuda train.dist_backend=gloo", "NCCL refuses two ranks on one device"):
        assert command in text, (command, text)
    assert "dry run ok" in text
    assert not out.exists() and not (tmp_path / "work").exists()


@pytest.mark.parametrize("case,env,message", [
    ("no-outdir", {}, "no OUTDIR given"),
    ("no-wheels", {"GPU_CHECK_WHEELS": "/nonexistent/whl"}, "carried wheels (/nonexistent/whl)"),
    ("no-data", {"GPU_CHECK_DATA": "/nonexistent/cifar10-jpeg.tar.gz"}, "no archive at /nonexistent/cifar10-jpeg.tar.gz"),
    ("no-torch", {"PYTHON": "/nonexistent/python3"}, "python with torch (/nonexistent/python3)"),
])
def test_dry_run_names_what_is_missing(tmp_path, case, env, message):
    args = ["--dry-run"] if case == "no-outdir" else ["--dry-run", str(tmp_path / "out")]
    result = gpu_check(tmp_path, *args, **env)
    assert result.returncode == (2 if case == "no-outdir" else 1), result.stdout + result.stderr
    assert message in result.stdout + result.stderr
    if case != "no-outdir":
        assert "missing" in result.stdout and "gpu_check: error:" in result.stderr
