"""train.py's main() once per config file given, all in this one process (one start-up for all of them),
each as `train.py --configs BASE <config> [KEY=VALUE ...] --run-dir OUT/<config name>`. Under plain python
it is one Horovod worker; under horovodrun -np N, N. Usage: train_configs.py OUT BASE [KEY=VALUE ...] -- CONFIG..."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
import train  # noqa: E402

out, rest = pathlib.Path(sys.argv[1]), sys.argv[2:]
split = rest.index("--")
base, configs = rest[:split], rest[split + 1:]
for config in configs:
    code = train.main(["--configs", base[0], config, *base[1:], "--run-dir", str(out / pathlib.Path(config).stem)])
    if code:
        sys.exit(f"train.py --configs {base[0]} {config} {' '.join(base[1:])} exited {code}")
