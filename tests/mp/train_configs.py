"""train.py's main() once per config file given, all in this one process (one start-up for all of them),
each as `train.py --configs BASE <config> [KEY=VALUE ...] --run-dir OUT/<config name>`. Under plain python
it is one Horovod worker; under horovodrun -np N, N (every rank runs every config). With --share, several
plain-python processes given the same OUT and list share the work: each config goes to the first process
that claims it (OUT/<name>.claim, created once). A config that fails leaves OUT/<name>.error (its exit code
or traceback) and the others still run. Usage: train_configs.py [--share] OUT BASE [KEY=VALUE ...] -- CONFIG..."""
import os
import pathlib
import sys
import traceback

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
import train  # noqa: E402

share = sys.argv[1] == "--share"
out, rest = pathlib.Path(sys.argv[1 + share]), sys.argv[2 + share:]
split = rest.index("--")
base, configs = rest[:split], rest[split + 1:]
out.mkdir(parents=True, exist_ok=True)
failed = 0
for config in configs:
    name = pathlib.Path(config).stem
    if share:
        try:
            os.close(os.open(out / f"{name}.claim", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            continue
    try:
        code = train.main(["--configs", base[0], config, *base[1:], "--run-dir", str(out / name)])
        error = f"train.py exited {code}" if code else None
    except Exception:  # noqa: BLE001 (recorded for the test to report; the other configs still run)
        error = traceback.format_exc()
    if error:
        failed += 1
        (out / f"{name}.error").write_text(f"train.py --configs {base[0]} {config} {' '.join(base[1:])}: {error}")
sys.exit(1 if failed else 0)
