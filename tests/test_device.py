"""Where train.py trains (train.device, train.dist_backend): bad values and "cuda" without CUDA stop it before
anything starts, "auto" is the GPU only where CUDA is, a digits run trains, resumes and evaluates on each
available device, and a checkpoint's exchange state lands on the device of the parameter it belongs to."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

import train
from conftest import ROOT, devices
from dgc.compressors.dgc import DGCCompressor
from dgc.compressors.powersgd import PowerSGDCompressor
from dgc.compressors.randomk import RandomKCompressor
from dgc.compressors.signum import SignumCompressor
from dgc.exchange import Exchange
from dgc.inprocess import InProcessGroup
from dgc.memory import DGCSGDMemory, Memory, ResidualMemory
from training.config import ConfigError, load_configs

DIGITS = "configs/digits/digitsnet.py"


def config(*overrides):
    return load_configs([DIGITS], list(overrides), root=ROOT / "configs")


@pytest.mark.parametrize("overrides,backend,message", [
    (["train.device='gpu'"], "horovod", r"'train.device' must be 'auto' .*'cpu' or 'cuda', got 'gpu'"),
    (["train.dist_backend='nccl2'"], "torch", r"'train.dist_backend' must be None .*gloo, nccl.* got 'nccl2'"),
    (["train.dist_backend='tpu:xla'"], "torch", r"'train.dist_backend' must be None .* got 'tpu:xla'"),
    (["train.dist_backend='gloo,nccl'"], "torch", r"'train.dist_backend' must be None .* got 'gloo,nccl'"),
    (["train.device='cpu'", "train.dist_backend='cuda:nccl'"], "torch",
     r"train.dist_backend='cuda:nccl' has no backend for cpu tensors and train.device='cpu' trains on the CPU"),
    (["train.device='cpu'", "train.dist_backend='gloo'"], "horovod",
     r"train.dist_backend='gloo' is the torch backend's process group \(--backend torch\)"),
])
def test_bad_device_keys_are_named(overrides, backend, message):
    cfg = config(*overrides)
    with pytest.raises(ConfigError, match=message):
        train.check_config(cfg)
        train.check_device(cfg, backend)


@pytest.mark.parametrize("backend", [None, "gloo", "cpu:gloo,cuda:nccl", "cpu:gloo"])
def test_good_dist_backends_pass_on_the_cpu(backend):
    cfg = config("train.device='cpu'", f"train.dist_backend={backend!r}")
    train.check_config(cfg)
    train.check_device(cfg, "torch")
    assert train.dist_backend(cfg) == (backend or "gloo")


def test_auto_is_the_gpu_only_where_cuda_is_available(monkeypatch):
    assert train.device_type(config()) == ("cuda" if torch.cuda.is_available() else "cpu")
    for available, kind, backend in ((False, "cpu", "gloo"), (True, "cuda", "cpu:gloo,cuda:nccl")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        assert (train.device_type(config()), train.dist_backend(config())) == (kind, backend)
        assert train.device_type(config("train.device='cpu'")) == "cpu"
        assert train.training_device(config("train.device='cpu'"), 3) == torch.device("cpu")
    assert train.dist_backend(config("train.dist_backend='gloo'")) == "gloo"


@pytest.fixture
def one_gpu(monkeypatch):
    """A machine that pretends to have one GPU (only the checks' view of it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    return monkeypatch


def test_horovod_without_cuda_cannot_train_on_the_gpu(one_gpu):
    hvd = pytest.importorskip("horovod.torch")
    one_gpu.setattr(hvd, "cuda_built", lambda: False)
    with pytest.raises(ConfigError, match=r"train.device='auto' trains on the GPU, but this Horovod is built "
                                          r"without CUDA; build it with HOROVOD_GPU_OPERATIONS=NCCL"):
        train.check_device(config(), "horovod")
    train.check_device(config("train.device='cpu'"), "horovod")


def test_nccl_takes_one_gpu_per_rank(one_gpu):
    """More ranks on a host than GPUs is an error before the process group starts, unless the CUDA tensors go
    through Gloo (ranks then share GPUs)."""
    one_gpu.setenv("LOCAL_WORLD_SIZE", "2")
    for backend in (None, "nccl"):
        with pytest.raises(ConfigError, match=r"2 ranks on this host and 1 GPU: NCCL takes one GPU per rank"):
            train.check_device(config(f"train.dist_backend={backend!r}"), "torch")
    train.check_device(config("train.dist_backend='gloo'"), "torch")
    one_gpu.setenv("LOCAL_WORLD_SIZE", "1")
    train.check_device(config(), "torch")


def run_train(*args, env=()):
    environment = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    environment.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **dict(env))
    return subprocess.run([sys.executable, "train.py", *map(str, args)], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=120)


def test_cuda_without_cuda_is_an_error_before_the_process_group_starts(tmp_path):
    """No RANK or MASTER_ADDR in the environment: a process group started first would fail otherwise."""
    result = run_train("--backend", "torch", "--configs", DIGITS, "train.device=cuda", "--run-dir", tmp_path / "run",
                       env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2, result.stderr
    assert "train.py: error: train.device='cuda' but CUDA is not available here (torch " in result.stderr
    assert "set train.device='cpu'" in result.stderr
    assert not (tmp_path / "run").exists()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("device", devices())
def test_train_resume_and_evaluate_on_the_device(device, tmp_path):
    """One torch-backend rank with PowerSGD (its Q and the residuals are the exchange state): 1 epoch, then
    resumed to 2 (the checkpoint's state loaded on the device before the next step), then (CUDA) --evaluate. On
    CUDA over plain NCCL, which takes no CPU tensor: every collective's tensors (sums, flags, the resume
    agreement) are on the GPU."""
    run = tmp_path / "run"
    common = ["--backend", "torch", "--configs", DIGITS, "configs/compression/powersgd.py",
              f"train.device={device.type}", *(["train.dist_backend=nccl"] if device.type == "cuda" else []),
              "--run-dir", run]
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}
    for epochs in (1, 2):
        result = run_train(*common, f"train.num_epochs={epochs}", env={**env, "MASTER_PORT": str(free_port())})
        assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming {run} at epoch 2" in result.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["device"] == device.type and metrics["epochs"] == 2
    assert metrics["final_test_top1"] > 90 and metrics["mean_compression_ratio"] < 0.1, metrics
    if device.type == "cpu":
        return      # --evaluate on the CPU: test_train.py's CIFAR smoke runs
    result = run_train(*common, "train.num_epochs=2", "--evaluate", env={**env, "MASTER_PORT": str(free_port())})
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"test_top1={metrics['final_test_top1']:.4f}" in result.stdout


PARTS = {"powersgd": (lambda: PowerSGDCompressor(min_compress_numel=100), ResidualMemory),
         "signum": (lambda: SignumCompressor(min_compress_numel=100), Memory),
         "dgc": (lambda: DGCCompressor(0.1, min_compress_numel=100), lambda: DGCSGDMemory(momentum=0.9)),
         "randomk": (lambda: RandomKCompressor(0.1, min_compress_numel=100), ResidualMemory)}


def exchange_of(model, kind):
    compressor, memory = PARTS[kind]
    return Exchange(list(model.named_parameters()), InProcessGroup(1).communicator(0), compressor(), memory())


def step(model, exchange, seed):
    """One exchange of seeded gradients for every parameter (on each parameter's device); the global RNG
    seeded too (DGC's strided sample draws its start from it)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    grads = {n: torch.randn(p.shape, generator=gen).to(p.device) for n, p in model.named_parameters()}
    exchange.finish([exchange.start(n, g) for n, g in grads.items()])
    return grads


def state_tensors(state, path=()):
    """``(path, tensor)`` of every tensor in a nested state dict."""
    if isinstance(state, torch.Tensor):
        yield path, state
    elif isinstance(state, dict):
        for key, value in state.items():
            yield from state_tensors(value, path + (key,))


@pytest.mark.parametrize("kind", sorted(PARTS))
@pytest.mark.parametrize("target", [*devices(), pytest.param(torch.device("meta"), id="meta")])
def test_exchange_state_loads_onto_each_parameters_device(kind, target):
    """State saved on the CPU (every checkpoint loads there) is loaded by an exchange whose first layer lives
    on ``target`` and second on the CPU: each tensor of the compressor's and memory's state goes to its own
    parameter's device (meta stands in for a GPU on a CPU-only machine). On a real device the next step then
    runs there and matches the CPU's continuation."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 10), torch.nn.Linear(10, 20))
    exchange = exchange_of(model, kind)
    step(model, exchange, 1)
    saved = exchange.state_dict()
    tensors = list(state_tensors({"compressor": saved["compressor"], "memory": saved["memory"]}))
    assert tensors, "no state to move"
    moved = torch.nn.Sequential(torch.nn.Linear(20, 10), torch.nn.Linear(10, 20))
    moved[0].to(target)
    resumed = exchange_of(moved, kind)
    resumed.load_state_dict(saved)
    params = dict(moved.named_parameters())
    loaded = list(state_tensors({"compressor": resumed.compressor.state_dict(), "memory": resumed.memory.state_dict()}))
    assert [path for path, _ in loaded] == [path for path, _ in tensors]
    assert {path[-1] for path, _ in loaded} <= params.keys()
    for path, tensor in loaded:
        assert tensor.device == params[path[-1]].device, path
    assert any(t.device == target for _, t in loaded)
    assert resumed.compressor.state_dict().get("steps") == saved["compressor"].get("steps")
    if target.type == "meta" or (kind == "randomk" and target.type != "cpu"):
        return      # random-k draws its positions from the device's generator: another device draws others
    expected, got = step(model, exchange, 2), step(moved, resumed, 2)
    for name, grad in expected.items():
        torch.testing.assert_close(got[name].cpu(), grad, rtol=1e-4, atol=1e-5)
