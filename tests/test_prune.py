"""Gradual magnitude pruning (training/prune.py): Zhu & Gupta's schedule, exact layer and global sparsity,
masks on weights, gradients and every state that remembers a pruned position, through a real BatchNorm model
and the DGC exchange, and masks surviving a killed and resumed train.py run."""
import os
import subprocess
import sys

import pytest
import torch

import train
from conftest import ROOT
from dgc.horovod import DistributedOptimizer
from dgc.inprocess import InProcessGroup
from models import DigitsNet
from training.checkpoint import load as load_checkpoint
from training.config import load_configs
from training.prune import GradualPruner, prunable

DIGITS = ROOT / "configs" / "digits" / "digitsnet.py"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: these models are tiny, and more threads only contend for the 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batch(gen, n=16):
    return torch.randn(n, 1, 8, 8, generator=gen), torch.randint(10, (n,), generator=gen)


def test_schedule_is_eq1_and_updates_every_frequency_steps():
    """s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n dt))^3: s_i until t0, s_f from t_end, the cube in between."""
    pruner = GradualPruner(DigitsNet(), steps_per_epoch=10, final_sparsity=0.9, initial_sparsity=0.1,
                           start_epoch=1, end_epoch=5, frequency=7, num_epochs=6)
    assert (pruner.start_step, pruner.end_step) == (10, 50)
    assert pruner.sparsity_at(0) == pruner.sparsity_at(10) == pytest.approx(0.1)
    assert pruner.sparsity_at(30) == pytest.approx(0.9 - 0.8 * 0.5 ** 3)
    assert pruner.sparsity_at(20) == pytest.approx(0.9 - 0.8 * 0.75 ** 3)
    assert pruner.sparsity_at(50) == pruner.sparsity_at(60) == pytest.approx(0.9)
    assert [t for t in range(70) if pruner.updates_at(t)] == [10, 17, 24, 31, 38, 45, 50]
    default = GradualPruner(DigitsNet(), steps_per_epoch=10, final_sparsity=0.5, num_epochs=8)
    assert (default.start_step, default.end_step) == (0, 60)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_sparsity_is_reached_exactly_and_biases_and_batchnorm_stay_dense(scope):
    torch.manual_seed(0)
    model = DigitsNet()
    dense_before = {n: t.clone() for n, t in model.state_dict().items() if t.dim() < 2}
    pruner = GradualPruner(model, steps_per_epoch=1, final_sparsity=0.7, scope=scope, num_epochs=4)
    pruner.update_masks(0.7)
    weights = dict(prunable(model))
    assert set(weights) == {"features.0.weight", "features.3.weight", "classifier.1.weight", "classifier.4.weight"}
    zeros = {n: int((w == 0).sum()) for n, w in weights.items()}
    assert zeros == {n: int((~pruner.masks[n]).sum()) for n in weights}
    total = sum(w.numel() for w in weights.values())
    if scope == "layer":
        assert zeros == {n: round(0.7 * w.numel()) for n, w in weights.items()}
    else:
        assert sum(zeros.values()) == round(0.7 * total)
        assert len({round(z / weights[n].numel(), 3) for n, z in zeros.items()}) > 1     # not per layer
        kept = torch.cat([w[pruner.masks[n]].abs() for n, w in weights.items()])
        assert (kept > 0).all()
    assert pruner.sparsity() == pytest.approx(sum(zeros.values()) / total)
    for name, value in model.state_dict().items():
        if value.dim() < 2:
            assert torch.equal(value, dense_before[name]), name
    pruner.update_masks(0.8)        # rising sparsity keeps what was pruned pruned
    assert all((w[~m] == 0).all() for w, m in zip(weights.values(), pruner.masks.values()))


def test_masks_zero_gradients_weights_and_momentum_through_a_batchnorm_model():
    """Plain SGD with momentum and weight decay on DigitsNet (BatchNorm): after a mask update the gradients
    at pruned positions are zero before any hook after them sees them, the weights stay zero after every
    step, and the momentum there is zero; BatchNorm and biases keep training."""
    torch.manual_seed(0)
    model = DigitsNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)
    pruner = GradualPruner(model, steps_per_epoch=4, final_sparsity=0.75, start_epoch=0, end_epoch=2,
                           frequency=2, num_epochs=3)
    pruner.attach(optimizer)
    seen = {}
    for name, p in pruner.params.items():       # a hook after the pruner's, as Horovod's and DDP's come after it
        p.register_hook(lambda grad, name=name: seen.__setitem__(name, grad.clone()))
    bn_before = model.features[1].weight.detach().clone()
    gen = torch.Generator().manual_seed(1)
    for step in range(12):
        masks = {n: m.clone() for n, m in pruner.masks.items()}
        x, y = batch(gen)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        for name, p in pruner.params.items():
            assert (seen[name][~masks[name]] == 0).all() and (p.grad[~masks[name]] == 0).all(), (step, name)
        optimizer.step()
        pruner.step()
        for name, p in pruner.params.items():
            mask = pruner.masks[name]
            assert (p[~mask] == 0).all(), (step, name)
            assert (optimizer.state[p]["momentum_buffer"][~mask] == 0).all(), (step, name)
    assert pruner.sparsity() == pytest.approx(0.75, abs=1e-3)
    assert not torch.equal(model.features[1].weight, bn_before)


def test_state_round_trip_continues_identically():
    torch.manual_seed(0)
    model = DigitsNet()
    pruner = GradualPruner(model, steps_per_epoch=2, final_sparsity=0.6, frequency=1, num_epochs=4)
    for _ in range(3):
        pruner.step()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p), alpha=0.1)
    state = pruner.state_dict()
    copy = DigitsNet()
    copy.load_state_dict(model.state_dict())
    other = GradualPruner(copy, steps_per_epoch=2, final_sparsity=0.6, frequency=1, num_epochs=4)
    other.load_state_dict(state)
    assert other.steps == 3 and all(torch.equal(other.masks[n], m) for n, m in pruner.masks.items())
    for _ in range(4):
        pruner.step()
        other.step()
    assert all(torch.equal(other.masks[n], m) for n, m in pruner.masks.items())
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), copy.parameters()))
    with pytest.raises(KeyError, match="features.0.weight"):
        other.load_state_dict({"steps": 0, "masks": {n: m for n, m in state["masks"].items()
                                                     if n != "features.0.weight"}})


def test_pruned_weights_are_never_selected_by_dgc():
    """Two in-process ranks, configs/dgc's compressor and memory through dgc.horovod's DistributedOptimizer
    and a real backward pass: after each mask update nothing the sparsifier selects lies at a pruned
    position (the memory's momentum and velocity there are zeroed; without that, the velocity accumulated
    before pruning is sent later), and the ranks keep identical masks and weights."""
    cfg = load_configs([DIGITS, ROOT / "configs" / "dgc" / "__init__.py"], root=ROOT / "configs")
    world = 2
    torch.manual_seed(0)
    nets = [cfg.model() for _ in range(world)]
    nets[1].load_state_dict(nets[0].state_dict())
    group = InProcessGroup(world, timeout=20.0)

    def worker(comm):
        net = nets[comm.rank]
        pruner = GradualPruner(net, steps_per_epoch=5, final_sparsity=0.9, start_epoch=1, end_epoch=4,
                               frequency=3, num_epochs=6)
        optimizer = DistributedOptimizer(train.scaled_optimizer(cfg, net, world), communicator=comm,
                                         named_parameters=net.named_parameters(), **train.exchange_options(cfg))
        pruner.attach(optimizer, optimizer.exchange.memory)
        compressor, selected = optimizer.exchange.compressor, []
        compress = compressor.compress

        def recording(tensor, name):
            payload, ctx = compress(tensor, name)
            selected.append((pruner.steps, name, payload.sent.indices.clone(), pruner.masks[name].reshape(-1).clone()))
            return payload, ctx
        compressor.compress = recording
        gen = torch.Generator().manual_seed(comm.rank)
        for _ in range(30):
            x, y = batch(gen)
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()
            pruner.step()
        return selected, pruner.masks, torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    results = group.run(worker)
    for selected, _, _ in results:
        assert {name for _, name, _, _ in selected} == {"features.3.weight", "classifier.1.weight",
                                                       "classifier.4.weight"}
        pruned = [(step, name, int((~mask[indices]).sum())) for step, name, indices, mask in selected]
        assert [p for p in pruned if p[2]] == []
        assert any(step > 5 for step, _, _ in pruned)
    assert all(torch.equal(m, results[1][1][n]) for n, m in results[0][1].items())
    assert torch.equal(results[0][2], results[1][2])
    assert sum(int((~m).sum()) for m in results[0][1].values()) > 0.85 * sum(m.numel() for m in results[0][1].values())


PRUNE = ["--configs", str(DIGITS), str(ROOT / "configs" / "prune" / "gradual.py"), "train.num_epochs=5"]


@pytest.mark.parametrize("overrides,message", [
    (["train.prune.final_sparsity=1.0"], r"final_sparsity=1.0 must be a fraction in \[0, 1\)"),
    (["train.prune.start_epoch=3", "train.prune.end_epoch=2"], "end_epoch=2 must be after start_epoch=3"),
    (["train.prune.end_epoch=6"], r"end_epoch=6 is beyond the run's 5 epochs \(train.num_epochs\)"),
    (["train.prune.scope='row'"], "scope='row' must be 'layer' .* or 'global'"),
    (["train.prune.frequency=0"], "frequency=0 must be an int >= 1"),
    (["train.prune.initial_sparsity=0.9"], "initial_sparsity=0.9 exceeds final_sparsity=0.8"),
    (["train.init_checkpoint=3"], "train.init_checkpoint' must be None or the path"),
])
def test_bad_pruning_values_fail_before_training(overrides, message, tmp_path, capsys, monkeypatch):
    import re
    monkeypatch.chdir(ROOT)
    assert train.main([*PRUNE, *overrides, "--run-dir", str(tmp_path / "run")]) == 2
    stderr = capsys.readouterr().err
    assert re.search("train.py: error: .*" + message, stderr), stderr
    assert not (tmp_path / "run").exists()


RUNS = """
import sys
sys.path.insert(0, {root!r})
import train
from training import checkpoint


class Killed(Exception):
    pass


save = checkpoint.save


def save_then_die(*args, **kwargs):
    save(*args, **kwargs)
    if args[4] == {epoch}:
        raise Killed


args = sys.argv[1:]
assert train.main([*args, "--run-dir", {straight!r}]) == 0
checkpoint.save = save_then_die
try:
    train.main([*args, "--run-dir", {resumed!r}])
    sys.exit("not killed")
except Killed:
    pass
checkpoint.save = save
assert train.main([*args, "--run-dir", {resumed!r}]) == 0
tune = [*args, "train.num_epochs=1", "train.prune.start_epoch=0", "train.prune.end_epoch=1",
        "train.optimizer.lr=1e-9"]
assert train.main([*tune, "train.init_checkpoint=" + {straight!r}, "--run-dir", {tuned!r}]) == 0
assert train.main([*tune, "train.init_checkpoint=" + {garbage!r}, "--run-dir", {tuned!r} + "2"]) == 2
"""


def test_masks_survive_a_killed_and_resumed_run(tmp_path):
    """A digits DGC run pruning from epoch 1 to 4 of 5, killed right after its epoch-2 checkpoint and run
    again, ends with the masks, weights and accuracy of the uninterrupted run (CPU, one thread: deterministic);
    a fine-tuning run starts from its checkpoint, and a corrupt one is an error naming the file. The runs
    share one process (train.main after train.main, as a fresh start would run it) to pay the imports once."""
    args = ["--configs", str(DIGITS), str(ROOT / "configs" / "dgc" / "wm5.py"),
            str(ROOT / "configs" / "prune" / "gradual.py"), "train.num_epochs=5", "data.train_fraction=0.5",
            "train.prune.start_epoch=1", "train.prune.end_epoch=4", "train.prune.frequency=3", "train.device='cpu'"]
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    script = RUNS.format(root=str(ROOT), epoch=2, straight=str(tmp_path / "straight"),
                               resumed=str(tmp_path / "resumed"), tuned=str(tmp_path / "tuned"),
                               garbage=str(tmp_path / "garbage.pt"))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming {tmp_path / 'resumed'} at epoch 3" in result.stdout
    a, b = (load_checkpoint(tmp_path / d / "checkpoints" / "checkpoint.pt") for d in ("straight", "resumed"))
    assert a["prune"]["steps"] == b["prune"]["steps"] > 0
    for name, mask in a["prune"]["masks"].items():
        assert torch.equal(mask, b["prune"]["masks"][name]), name
        assert (a["model"][name][~mask] == 0).all()
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    assert [h["sparsity"] for h in a["history"]] == [h["sparsity"] for h in b["history"]]
    assert a["history"][-1]["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert a["history"][-1]["test_top1"] == b["history"][-1]["test_top1"]
    # Fine-tuning (train.init_checkpoint) starts from the straight run's weights: at lr 1e-9 its fresh masks
    # are the straight run's (its zeros sort first) and its accuracy is the straight run's, not chance.
    tuned = load_checkpoint(tmp_path / "tuned" / "checkpoints" / "checkpoint.pt")
    assert all(torch.equal(m, tuned["prune"]["masks"][n]) for n, m in a["prune"]["masks"].items())
    assert tuned["history"][-1]["test_top1"] > a["history"][-1]["test_top1"] - 2
    assert f"train.py: error: train.init_checkpoint: {tmp_path / 'garbage.pt'}: unreadable" in result.stderr
