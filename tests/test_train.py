"""train.py end to end through real horovodrun: errors before training, digits DGC vs baseline, CIFAR-10 smoke
runs, TensorBoard contents, kill -9 and resume."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import HOROVODRUN, ROOT, horovodrun, torchrun
from training.checkpoint import load as load_checkpoint

sys.path.insert(0, str(ROOT / "scripts"))
from bench_kill import worker_pid  # noqa: E402

DIGITS = ["configs/digits/digitsnet.py"]
DGC_CIFAR = ["configs/dgc/wm5.py", "configs/dgc/fp16.py", "configs/dgc/int32.py"]


def train_args(configs, run_dir, *overrides):
    return ["train.py", "--configs", *configs, *overrides, "--run-dir", run_dir]


def scalars(run_dir):
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [s.value for s in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def run_plain(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args,message", [
    (["--configs", *DIGITS, "train.no_such_key=1"], "train.no_such_key"),
    (["--configs", *DIGITS, "train.num_epochs=many"], "train.num_epochs.*expects a int"),
    (["--configs", "configs/digits/missing.py"], "missing.py.*does not exist"),
    (["--configs", "configs/cifar/resnet20.py", "data.dataset.root=/nonexistent/cifar"],
     "/nonexistent/cifar.*train/<class>"),
    (["--configs", *DIGITS, "train.batch_size=0"], "train.batch_size.*positive int"),
    (["--configs", *DIGITS, "train.measure_error_every=-5"], "train.measure_error_every.*int >= 0.*-5"),
    (["--configs", *DIGITS, "configs/dgc/wm5.py", "train.compression.compress_ratio=2"],
     r"train.py: error: train.compression: DGCCompressor: compress_ratio=2.0 is outside \(0, 1\]"),
    (["--configs", *DIGITS, "configs/dgc/wm5.py", "train.memory.gradient_clipping=-1.0"],
     "train.py: error: train.memory: .*gradient_clipping=-1.0 must be None or a positive max L2 norm"),
    (["--configs", *DIGITS, "configs/dgc/wm5.py", "train.optimizer.momentum=0.0", "train.optimizer.nesterov=True"],
     "train.py: error: train.optimizer with this compression and memory: Nesterov momentum requires a momentum"),
    (["--configs", *DIGITS, "train.hierarchical=True"], "train.hierarchical=True needs a compression"),
    (["--backend", "torch", "--configs", *DIGITS, "configs/dgc/wm5.py", "configs/dgc/hierarchical.py"],
     "train.hierarchical=True needs --backend horovod"),
    (["--configs", *DIGITS, "configs/ddp/powersgd.py"], "train.torch_hook.*needs --backend torch"),
    (["--backend", "torch", "--configs", *DIGITS, "configs/ddp/powersgd.py", "configs/dgc/wm5.py"],
     r"train.torch_hook .* and train.compression .* both replace DDP's allreduce"),
    (["--backend", "torch", "--configs", *DIGITS, "configs/dgc/wm5.py", "train.optimizer.momentum=0.0",
      "train.optimizer.nesterov=True"],
     "train.py: error: train.optimizer with this compression and memory: Nesterov momentum requires a momentum"),
    (["--configs", *DIGITS, "configs/dgc/wm5.py", "train.nonfinite='sometimes'"], "train.nonfinite.*'sometimes'"),
    (["--configs", *DIGITS, "configs/dgc/wm5.py", "train.amp='fp8'"], "train.amp.*None, 'bf16' or 'fp16'.*'fp8'"),
    (["--configs", *DIGITS, "train.amp='fp16'"], "train.amp='fp16' needs a compression"),
])
def test_bad_input_fails_before_training(args, message, tmp_path, capsys, monkeypatch):
    """train.py's main in this process (every check runs before a process group or a run directory exists;
    the command line's exit status is the next test's)."""
    import re

    import train
    monkeypatch.chdir(ROOT)
    try:
        status = train.main([*args, "--run-dir", str(tmp_path / "run")])
    except SystemExit as exit:      # argparse's errors
        status = exit.code
    stderr = capsys.readouterr().err
    assert status == 2, stderr
    assert "error" in stderr
    assert re.search(message, stderr), stderr
    assert not (tmp_path / "run").exists()


def test_bad_input_exits_2_from_the_command_line(tmp_path):
    result = run_plain("train.py", "--configs", *DIGITS, "train.batch_size=0", "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    assert "train.py: error: " in result.stderr and "train.batch_size" in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("dgc", [False, True], ids=["baseline", "dgc"])
def test_backward_passes_that_do_not_divide_the_epoch(dgc, tmp_path):
    """Leftover passes form the epoch's last, smaller step instead of leaking into the next epoch (which
    crashed). 0.08 of digits: 1 batch per worker and epoch, so every step is such a leftover; 0.2: 4 batches,
    steps of 3 and 1 passes."""
    extra = ["configs/dgc/wm0.py"] if dgc else []
    for fraction, steps in (("0.08", 1), ("0.2", 2)):
        run = tmp_path / fraction
        horovodrun(2, train_args(DIGITS + extra, run, "train.num_epochs=3", "train.backward_passes_per_step=3",
                                 f"data.train_fraction={fraction}"))
        history = json.loads((run / "metrics.json").read_text())["history"]
        assert [h["steps"] for h in history] == [steps] * 3
        assert all(math.isfinite(h["train_loss"]) for h in history)


def test_no_whole_batch_is_an_error_before_training(tmp_path):
    result = horovodrun(2, train_args(DIGITS, tmp_path / "run", "data.train_fraction=0.01"), check=False)
    assert result.returncode != 0
    assert "train.py: error: 14 training images over 2 workers make no whole batch of train.batch_size=32" in (
        result.stderr + result.stdout)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_compressor_is_one_file_plus_one_config(tmp_path):
    """configs/compression/topk.py selects dgc/compressors/topk.py (exact top-k, error feedback) with nothing else."""
    run = tmp_path / "topk"
    horovodrun(2, train_args(DIGITS + ["configs/compression/topk.py"], run, "train.num_epochs=4"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["compression"] == "TopKCompressor"
    assert metrics["history"][-1]["compression_ratio"] < 0.05 and metrics["final_test_top1"] > 80


def test_hierarchical_run_over_two_hosts_of_two_ranks(tmp_path):
    """configs/dgc/hierarchical.py under horovodrun -H localhost:2,127.0.0.1:2, at twice the ratio (each host
    sends what its 2 ranks would: the flat exchange's update density), learns as well as the flat DGC exchange
    over the same 4 ranks (within 3 points), and rank 0 (a host's leader) sends compressed. (At the same ratio
    the update has half the values; digits then reaches about 78% instead of 93% in 4 epochs.)"""
    results = {}
    hierarchical = ["configs/dgc/hierarchical.py", "train.compression.compress_ratio=0.002"]
    for name, extra in (("flat", []), ("hier", hierarchical)):
        horovodrun(4, train_args(DIGITS + ["configs/dgc/wm0.py", *extra], tmp_path / name, "train.num_epochs=4"),
                   hosts="localhost:2,127.0.0.1:2")
        results[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    hier = results["hier"]
    assert hier["num_workers"] == 4 and hier["final_test_top1"] > results["flat"]["final_test_top1"] - 3, results
    assert hier["history"][-1]["compression_ratio"] < 0.05, hier["history"][-1]


def test_mixed_precision_with_dgc_skips_overflow_steps_and_learns(tmp_path):
    """train.amp='fp16' from a loss scale of 2^24 (fp16 overflows: the first steps are skipped on both ranks and
    the scale halves until it fits) and train.amp='bf16' (no scaling) learn within 5 points of the fp32 run."""
    results = {}
    for name, extra in (("fp32", []), ("fp16", ["train.amp='fp16'", "train.amp_init_scale=16777216.0"]),
                        ("bf16", ["train.amp='bf16'"])):
        horovodrun(2, train_args(DIGITS + ["configs/dgc/wm5.py"], tmp_path / name, "train.num_epochs=4", *extra))
        results[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    first = results["fp16"]["history"][0]
    assert first["skipped_steps"] >= 1 and first["loss_scale"] < 2 ** 24, first
    assert sum(h["skipped_steps"] for h in results["fp32"]["history"]) == 0
    assert scalars(tmp_path / "fp16")["epoch/skipped_steps"][0] == first["skipped_steps"]
    for name in ("fp16", "bf16"):
        assert results[name]["final_test_top1"] > results["fp32"]["final_test_top1"] - 5, (name, results[name])


def test_torch_backend_trains_like_horovod(tmp_path):
    """The same DGC config under torchrun --backend torch (DDP + the dgc hook) and under horovodrun: the same
    compression ratios epoch for epoch and test accuracy within 1 point; the DDP baseline and torch's own
    PowerSGD hook (configs/ddp/powersgd.py) train too. The DGC run cannot import Horovod: the torch backend
    must not need it."""
    args = DIGITS + ["configs/dgc/wm5.py"]
    blocker = tmp_path / "no_horovod" / "horovod"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('horovod is blocked in this test')\n")
    runs = [torchrun(2, train_args(args, tmp_path / "ddp", "train.num_epochs=4", "--backend", "torch"),
                     pythonpath=[blocker.parent]),
            horovodrun(2, train_args(args, tmp_path / "hvd", "train.num_epochs=4"))]
    for run in runs:     # the optimizer steps as the lr scheduler wrapped it (torch warns otherwise)
        assert "lr_scheduler.step()" not in run.stderr + run.stdout
    torchrun(2, train_args(DIGITS, tmp_path / "ddp_dense", "train.num_epochs=2", "--backend", "torch"))
    ddp, hvd = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("ddp", "hvd"))
    assert [h["compression_ratio"] for h in ddp["history"]] == pytest.approx(
        [h["compression_ratio"] for h in hvd["history"]], rel=1e-6)
    assert abs(ddp["final_test_top1"] - hvd["final_test_top1"]) < 1, (ddp["final_test_top1"], hvd["final_test_top1"])
    dense = json.loads((tmp_path / "ddp_dense" / "metrics.json").read_text())
    assert dense["mean_compression_ratio"] == 1.0 and dense["final_test_top1"] > 80
    torchrun(2, train_args(DIGITS + ["configs/ddp/powersgd.py"], tmp_path / "ddp_powersgd",
                           "train.num_epochs=2", "--backend", "torch"))
    powersgd = json.loads((tmp_path / "ddp_powersgd" / "metrics.json").read_text())
    assert powersgd["mean_compression_ratio"] < 0.2 and powersgd["final_test_top1"] > 80, powersgd
    assert (tmp_path / "ddp" / "checkpoints" / "rank1.epoch4.pt").exists()


def test_ranks_draw_different_augmentations_reproducibly():
    """Each rank seeds its own random stream (crops and flips differ between ranks), and the same rank and
    seed draw the same again (so a resumed run, which restores each rank's RNG state, reproduces)."""
    from torchvision import transforms

    from training.data import seed_rank
    image = torch.arange(3 * 32 * 32, dtype=torch.float32).reshape(3, 32, 32)
    augment = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()])

    def draws(rank):
        seed_rank(42, rank)
        return torch.stack([augment(image) for _ in range(8)])

    assert not torch.equal(draws(0), draws(1))
    assert torch.equal(draws(1), draws(1))


def test_digits_dgc_within_one_point_of_baseline(tmp_path):
    """The embedded default, 2 workers, 40 epochs: DGC at ratio 0.001 (5-epoch warm-up) vs dense."""
    for name, extra in (("baseline", []), ("dgc", ["configs/dgc/wm5.py"])):
        horovodrun(2, train_args(DIGITS + extra, tmp_path / name))
    base = json.loads((tmp_path / "baseline" / "metrics.json").read_text())
    dgc = json.loads((tmp_path / "dgc" / "metrics.json").read_text())
    assert base["epochs"] == dgc["epochs"] == 40
    assert base["final_test_top1"] > 90
    assert abs(dgc["final_test_top1"] - base["final_test_top1"]) <= 1.0, (dgc["final_test_top1"], base["final_test_top1"])
    assert base["mean_compression_ratio"] == 1.0
    assert dgc["history"][-1]["compression_ratio"] < 0.01
    ratios = scalars(tmp_path / "dgc")["comm/compression_ratio"]
    assert ratios[0] > 10 * ratios[-1], "warm-up: early steps send far more than late ones"


@pytest.mark.parametrize("dgc", [False, True], ids=["baseline", "dgc"])
def test_cifar10_smoke(dgc, tmp_path):
    configs = ["configs/cifar/resnet20.py"] + (DGC_CIFAR if dgc else [])
    run = tmp_path / "run"
    horovodrun(2, train_args(configs, run, "train.num_epochs=1", "data.train_fraction=0.02",
                             "data.test_fraction=0.05", "train.log_every=2",
                             "train.measure_error_every=3"))
    tags = scalars(run)
    for tag in ("train/loss", "train/lr", "comm/compression_ratio", "comm/density", "comm/bytes_sent",
                "epoch/train_loss", "epoch/train_top1", "epoch/test_loss", "epoch/test_top1",
                "epoch/images_per_s", "epoch/time_s", "epoch/cumulative_bytes_sent"):
        assert tag in tags, tag
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_workers"] == 2 and metrics["model"] == "resnet20" and metrics["epochs"] == 1
    if dgc:
        # fp16 values + int32 indices: 6 bytes per value; warm-up epoch 0 keeps 0.001 ** (1/6) of values
        assert 0.2 < metrics["mean_compression_ratio"] < 0.7
        # steps 3, 6, ... measure the error of the sparse average against the dense one (and are logged)
        steps = metrics["history"][0]["steps"]
        assert len(tags["comm/relative_error"]) == len(tags["comm/snr_db"]) == steps // 3 > 0
        assert len(tags["train/loss"]) == len(set(range(2, steps + 1, 2)) | set(range(3, steps + 1, 3)))
        assert all(0 < e < 1 for e in tags["comm/relative_error"])
        assert 0 < metrics["mean_relative_error"] < 1 and metrics["mean_snr_db"] > 0
        assert metrics["mean_compress_ms"] > 0 and metrics["mean_decompress_ms"] > 0
    else:
        assert metrics["mean_compression_ratio"] == 1.0 and metrics["bytes_per_step"] == metrics["dense_bytes_per_step"]
        assert "comm/relative_error" not in tags and metrics["mean_relative_error"] is None
    assert (run / "config.txt").is_file() and (run / "checkpoints" / "checkpoint.pt").is_file()
    result = run_plain("train.py", "--configs", *configs, "--run-dir", str(run), "--evaluate",
                       "data.test_fraction=0.05")
    assert result.returncode == 0, result.stderr
    assert f"test_top1={metrics['final_test_top1']:.4f}" in result.stdout


def test_kill_one_worker_ends_the_job_and_resume_matches_uninterrupted_run(tmp_path):
    """kill -9 of one worker (rank 1) mid-run: the whole job ends within 60 s (no hang); the same command
    resumes from the last complete checkpoint with every rank's residuals and ends exactly where an
    uninterrupted run ends: weights, every rank's exchange state (residuals, momenta, compressor state) and
    the test accuracy bitwise equal. The run is deterministic: CPU, OMP_NUM_THREADS=1 in both runs (the same
    kernels and reduction orders), two workers (Horovod's sum of two values is exact in either order, the
    allgathered sparse pairs are summed in rank order), a strided DGC sample (no random draw), and the
    resumed ranks restore every RNG (data order, dropout) from their rank files; broadcast_optimizer_state
    copies tensors and pickles scalars, so nothing is rounded on the way."""
    args = train_args(DIGITS + ["configs/dgc/wm5.py"], tmp_path / "resumed", "train.num_epochs=10")
    horovodrun(2, train_args(DIGITS + ["configs/dgc/wm5.py"], tmp_path / "straight", "train.num_epochs=10"))
    cmd = [str(HOROVODRUN), "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, *map(str, args)]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    launcher = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        deadline = time.time() + 120
        # Rank files of epoch 4 are written after checkpoint.pt of epoch 3 (a barrier lies between), so once
        # one exists the main checkpoint names epoch 3 or later.
        while not (tmp_path / "resumed" / "checkpoints" / "rank1.epoch4.pt").exists():
            assert time.time() < deadline and launcher.poll() is None, "no checkpoint of epoch 4 appeared"
            time.sleep(0.02)
        pid = worker_pid(1, str(tmp_path / "resumed"))
        assert pid is not None, "rank 1's process not found"
        os.kill(pid, signal.SIGKILL)
        killed = time.time()
        launcher.wait(timeout=60)
        assert launcher.returncode != 0 and time.time() - killed < 60
        assert worker_pid(0, str(tmp_path / "resumed")) is None, "rank 0 outlived the job"
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    saved = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "checkpoint.pt")["epoch"]
    assert 3 <= saved < 10
    result = horovodrun(2, args)
    assert f"resuming {tmp_path / 'resumed'} at epoch {saved + 1}" in result.stdout
    straight = load_checkpoint(tmp_path / "straight" / "checkpoints" / "checkpoint.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "checkpoint.pt")
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    assert straight["history"][-1]["test_top1"] == resumed["history"][-1]["test_top1"]
    for rank in (0, 1):
        a = load_checkpoint(tmp_path / "straight" / "checkpoints" / f"rank{rank}.epoch10.pt")["exchange"]
        b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / f"rank{rank}.epoch10.pt")["exchange"]
        for key, tensors in a["memory"].items():
            assert tensors, f"rank {rank} saved no {key}"
            for name, t in tensors.items():
                assert torch.equal(t, b["memory"][key][name]), (rank, key, name)
        assert a["compressor"] == b["compressor"] and a["skipped_steps"] == b["skipped_steps"], rank


def test_ranks_with_different_configs_stop_before_training(tmp_path):
    """A config that differs between ranks (here it reads the rank) is caught at start on every rank."""
    config = ROOT / "configs" / f"_per_rank_{os.getpid()}.py"    # config files must live under configs/
    config.write_text("import os\nfrom training.config import configs\n"
                      "configs.train.batch_size = 32 + int(os.environ.get('HOROVOD_RANK', '0'))\n")
    try:
        result = horovodrun(2, train_args(DIGITS + [str(config)], tmp_path / "run"), check=False)
    finally:
        config.unlink()
    assert result.returncode != 0
    assert "ranks [1] run a different config than rank 0" in result.stderr + result.stdout
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_unwritable_run_directory_is_an_error_before_training(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    result = horovodrun(2, train_args(DIGITS, blocker / "run"), check=False)
    assert result.returncode != 0
    assert f"run directory {blocker / 'run' / 'checkpoints'} is not writable" in result.stderr + result.stdout
    assert blocker.read_text() == "not a directory"


def test_resume_on_another_number_of_workers_redistributes_the_residuals(tmp_path):
    """2 workers for 2 epochs, then the same run on 3 workers and on 1: each resumes at epoch 3 with the
    residuals redistributed (the sum is tested in test_checkpoint.py) and trains on."""
    for world, epochs in ((2, 2), (3, 3), (1, 4)):
        result = horovodrun(world, train_args(DIGITS + ["configs/dgc/wm5.py"], tmp_path / "run",
                                              f"train.num_epochs={epochs}"))
        if world != 2:
            assert f"at epoch {epochs}" in result.stdout
            assert "residuals redistributed" in result.stderr + result.stdout
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "checkpoint.pt")
    assert (state["epoch"], state["world_size"]) == (4, 1)


def test_checkpoint_of_another_config_is_not_overwritten(tmp_path):
    horovodrun(2, train_args(DIGITS, tmp_path / "run", "train.num_epochs=1"))
    before = (tmp_path / "run" / "checkpoints" / "checkpoint.pt").read_bytes()
    result = horovodrun(2, train_args(DIGITS + ["configs/dgc/wm0.py"], tmp_path / "run", "train.num_epochs=1"),
                        check=False)
    assert result.returncode != 0 and "different config" in result.stderr + result.stdout
    assert (tmp_path / "run" / "checkpoints" / "checkpoint.pt").read_bytes() == before
