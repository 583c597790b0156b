"""The model-compression table (README, "Compressing the trained model"): for one trained run (and optionally
its gradual-pruning fine-tune), every scripts/compress_model.py setting in VARIANTS, each file's size, its
ratio to the fp32 weights and the test top-1 train.py --evaluate measures on it.

    .venv/bin/python scripts/storage_table.py runs/cifar10-resnet20-e30 --configs configs/cifar/resnet20.py \\
        [--finetuned RUN_DIR ...] [--only-finetuned] --out docs/storage/cifar10_resnet20.md

Every command is printed and run as it stands (a subprocess), so each row can be reproduced by hand.
"""
import argparse
import os
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent

VARIANTS = [        # (row, compress_model.py arguments, from the fine-tuned run)
    ("fp32 (as stored by this format)", [], False),
    ("int8 per channel", ["--int8"], False),
    ("int8 per channel + Huffman", ["--int8", "--huffman"], False),
    ("prune 50%", ["--prune", "0.5"], False),
    ("prune 80%", ["--prune", "0.8"], False),
    ("prune 90%", ["--prune", "0.9"], False),
    ("k-means 8 bits", ["--bits", "8"], False),
    ("k-means 5 bits", ["--bits", "5"], False),
    ("k-means 4 bits", ["--bits", "4"], False),
    ("prune 50% + k-means 5 bits + Huffman", ["--prune", "0.5", "--bits", "5", "--huffman"], False),
    ("prune 80% + k-means 5 bits + Huffman", ["--prune", "0.8", "--bits", "5", "--huffman"], False),
    ("low rank, 50% energy", ["--low-rank", "0.5"], False),
    ("low rank, 90% energy", ["--low-rank", "0.9"], False),
    ("gradual pruning fine-tune (sparse, fp32)", [], True),      # its zeros are stored sparse by themselves
    ("gradual pruning fine-tune + k-means 6 bits + Huffman", ["--bits", "6", "--huffman"], True),
    ("gradual pruning fine-tune + k-means 5 bits + Huffman", ["--bits", "5", "--huffman"], True),
    ("gradual pruning fine-tune + k-means 4 bits + Huffman", ["--bits", "4", "--huffman"], True),
]


def run(cmd):
    """Run ``cmd`` from the repository root, printing it first; its stdout (stop on failure)."""
    print("$ " + " ".join(cmd), flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def evaluate(configs, checkpoint, run_dir):
    out = run([sys.executable, "train.py", "--configs", *configs, "--evaluate", "--checkpoint", str(checkpoint),
               "--run-dir", str(run_dir)])
    return float(re.search(r"test_top1=([\d.]+)", out).group(1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="the trained run directory")
    parser.add_argument("--configs", nargs="+", required=True, help="its dataset and model config files")
    parser.add_argument("--finetuned", nargs="+", default=[],
                        help="gradual-pruning fine-tunes of it (configs/prune/gradual.py)")
    parser.add_argument("--only-finetuned", action="store_true",
                        help="only the fine-tunes' rows (the change still against the trained run's fp32 file)")
    parser.add_argument("--out", required=True, help="the Markdown table to write")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        base = None
        jobs = [(name, options, args.run) for name, options, finetuned in VARIANTS[:1]]
        if not args.only_finetuned:
            jobs += [(name, options, args.run) for name, options, finetuned in VARIANTS[1:] if not finetuned]
        jobs += [(name, options, run) for run in args.finetuned for name, options, finetuned in VARIANTS if finetuned]
        for number, (name, options, source) in enumerate(jobs):
            out = tmp / f"{number}.dgcz"
            printed = run([sys.executable, "scripts/compress_model.py", source, "--out", str(out), *options])
            dense = int(re.search(r"smaller than the (\d+) bytes", printed).group(1))
            top1 = evaluate(args.configs, out, tmp / "eval")
            base = top1 if base is None else base
            size = out.stat().st_size
            rows.append((name, " ".join(["compress_model.py", source, *options]), size, dense / size, top1,
                         top1 - base))
            print(f"{name}: {size} bytes, top-1 {top1:.2f}%", flush=True)
    lines = ["| model file | command | bytes | ratio to fp32 weights | test top-1 | change |",
             "| :--- | :--- | ---: | ---: | ---: | ---: |"]
    for name, cmd, size, ratio, top1, change in rows:
        lines.append(f"| {name} | `{cmd}` | {size:,} | {ratio:.1f}x | {top1:.2f}% | {change:+.2f} |")
    text = "\n".join(lines) + "\n"
    pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
