"""The package as a user gets it: `pip install .` into a folder of its own, then the README's user script,
run from outside the checkout under horovodrun -np 2 (replicas must end bit-identical)."""
import os
import re
import shutil
import subprocess
import sys

from conftest import HOROVODRUN, ROOT


def test_installed_package_runs_the_readme_user_script(tmp_path):
    source, target = tmp_path / "source", tmp_path / "site"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "data", "runs", "build", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, capture_output=True, text=True, timeout=300)
    assert (target / "dgc" / "exchange.py").is_file() and not (target / "training").exists()
    readme = (ROOT / "README.md").read_text()
    script = re.search(r"<!-- user-script -->\n```python\n(.*?)```\n<!-- /user-script -->", readme, re.S).group(1)
    assert len(script.strip().splitlines()) <= 22
    (tmp_path / "user.py").write_text(script)
    env = dict(os.environ, PYTHONPATH=str(target), OMP_NUM_THREADS="1")
    result = subprocess.run([str(HOROVODRUN), "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, "user.py"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = re.findall(r"rank (\d): loss ([\d.]+), bytes sent / dense ([\d.]+), weights checksum (\S+)", result.stdout)
    assert sorted(r for r, *_ in lines) == ["0", "1"], result.stdout
    assert lines[0][3] == lines[1][3], "replicas differ"
    assert all(float(ratio) < 0.2 for _, _, ratio, _ in lines)
    assert all(float(loss) < 1.5 for _, loss, _, _ in lines), lines
