"""Checkpoint files in one process: checksums catch truncation and alteration, a full disk leaves the old
file, resuming falls back to the previous checkpoint together on every rank, and a different number of
workers (or of ranks keeping residuals) gets the residuals redistributed with their sum preserved."""
import errno
import os

import pytest
import torch

from dgc.compressors.randomk import RandomKCompressor
from dgc.compressors.signum import SignumCompressor
from dgc.exchange import Exchange
from dgc.inprocess import InProcessGroup
from dgc.memory import ResidualMemory
from training import checkpoint as ckpt


def test_checksum_catches_truncation_and_alteration(tmp_path):
    path = tmp_path / "c.pt"
    ckpt.atomic_save({"w": torch.arange(1000.0)}, path)
    assert torch.equal(ckpt.load(path)["w"], torch.arange(1000.0))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CorruptCheckpoint, match="c.pt: unreadable"):
        ckpt.load(path)
    altered = bytearray(data)
    altered[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(altered))
    with pytest.raises(ckpt.CorruptCheckpoint, match="checksum mismatch"):
        ckpt.load(path)


def test_full_disk_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    ckpt.atomic_save({"epoch": 1}, path)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        ckpt.atomic_save({"epoch": 2}, path)
    assert ckpt.load(path) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_redistribution_preserves_the_sum_of_residuals_and_shares_the_shared_compressor_state():
    """Flat 2 -> 1 or 3 workers: residuals summed and split; a key the compressor declares shared (random-k's
    "steps") is the first old rank's on every new rank, the others (Signum: all) the old ranks' in turn.
    (The old ranks' counters differ here only to tell the two rules apart.)"""
    gen = torch.Generator().manual_seed(0)
    olds = [{"compressor": {"steps": {"w": 7 + r}, "momentum": {"w": torch.randn(50, generator=gen)}},
             "memory": {"residuals": {"w": torch.randn(50, generator=gen)}}, "skipped_steps": 0} for r in range(2)]
    total = olds[0]["memory"]["residuals"]["w"] + olds[1]["memory"]["residuals"]["w"]
    for world in (1, 3):
        for compressor in (RandomKCompressor(), SignumCompressor()):
            news = [ckpt.redistribute(olds, rank, world, compressor=compressor) for rank in range(world)]
            torch.testing.assert_close(sum(n["memory"]["residuals"]["w"] for n in news), total, rtol=0, atol=1e-6)
            steps = [{"w": 7}] * world if compressor.shared_state else [{"w": 7 + r % 2} for r in range(world)]
            assert [n["compressor"]["steps"] for n in news] == steps
            for rank, n in enumerate(news):
                assert torch.equal(n["compressor"]["momentum"]["w"], olds[rank % 2]["compressor"]["momentum"]["w"])
    assert torch.equal(olds[0]["memory"]["residuals"]["w"] + olds[1]["memory"]["residuals"]["w"], total), \
        "the old states were modified"
    assert ckpt.redistribute([{}, {}], 2, 3) == {}      # the backends' own exchange (DenseStats) keeps no state


def test_hierarchical_redistribution_gives_the_sum_and_the_compressor_state_to_the_new_leaders_only():
    """Hierarchical runs keep residuals and compress on each host's leader only: 2 hosts x 2 ranks (leaders 0
    and 2) resumed as 2 hosts x 3 ranks (leaders 0 and 3), 3 hosts x 2 ranks (leaders 0, 2, 4) or 4 flat: the
    new leaders share the old leaders' sum, the other ranks get none (they never use it, so a share there
    would be lost); every new leader gets an old leader's compressor state (shared random-k counters, a
    Signum momentum: the old leaders' in turn), never a non-leader's empty one; non-leaders a fresh one."""
    gen = torch.Generator().manual_seed(1)

    def compressor_state(r):
        return {"steps": {"w": 5}, "momentum": {"w": torch.randn(50, generator=gen)}} if r in (0, 2) else \
            {"steps": {}, "momentum": {}}
    olds = [{"compressor": compressor_state(r),
             "memory": {"residuals": {"w": torch.randn(50, generator=gen)} if r in (0, 2) else {}},
             "skipped_steps": 0} for r in range(4)]
    total = olds[0]["memory"]["residuals"]["w"] + olds[2]["memory"]["residuals"]["w"]
    for world, leaders in ((6, [0, 3]), (6, [0, 2, 4]), (4, [0, 1]), (4, None)):
        keepers = range(world) if leaders is None else leaders
        news = [ckpt.redistribute(olds, rank, world, leaders, [0, 2], SignumCompressor()) for rank in range(world)]
        assert [bool(n["memory"]["residuals"]) for n in news] == [r in keepers for r in range(world)]
        torch.testing.assert_close(sum(news[r]["memory"]["residuals"]["w"] for r in keepers), total, rtol=0, atol=1e-6)
        for rank, n in enumerate(news):
            if rank in keepers:
                old = olds[[0, 2][list(keepers).index(rank) % 2]]["compressor"]
                assert torch.equal(n["compressor"]["momentum"]["w"], old["momentum"]["w"]), (world, leaders, rank)
                assert n["compressor"]["steps"] == {"w": 5}
            else:
                assert n["compressor"] == SignumCompressor().state_dict(), (world, leaders, rank)


@pytest.mark.parametrize("compressor", ["randomk", "signum"])
def test_resume_redistributes_when_the_leaders_changed_at_the_same_world_size(tmp_path, compressor):
    """Same number of workers, other ranks keeping residuals (hosts regrouped): each rank's own file would
    leave a new leader empty and the old one's residuals unused, so they are redistributed, with the old
    compressing rank's compressor state (random-k's counters, Signum's momentum)."""
    save_epochs(tmp_path, 1, compressor)
    saved = ckpt.load(tmp_path / "rank0.epoch1.pt")["exchange"]
    assert saved["memory"]["residuals"]["weight"].any() and saved["compressor"][STATE[compressor]]
    model, optimizer, scheduler, exchange = make(compressor)
    with pytest.warns(UserWarning, match=r"residuals on ranks all.*residuals on ranks \[0\].*redistributed"):
        ckpt.resume(tmp_path / "checkpoint.pt", tmp_path, 0, 1, "cfg", model, optimizer, scheduler, exchange,
                    all_ok=lambda ok: ok, leaders=[0])
    assert torch.equal(exchange.memory.buffers["residuals"]["weight"], saved["memory"]["residuals"]["weight"])
    assert_same_compressor_state(exchange, saved["compressor"])


COMPRESSORS = {"randomk": lambda: RandomKCompressor(0.1, min_compress_numel=100),
               "signum": lambda: SignumCompressor(min_compress_numel=100)}
STATE = {"randomk": "steps", "signum": "momentum"}      # non-empty once the weight was compressed


def assert_same_compressor_state(exchange, saved):
    state = exchange.compressor.state_dict()
    assert state.keys() == saved.keys() and state, state
    for key, values in saved.items():
        assert values and values.keys() == state[key].keys(), key
        for name, value in values.items():
            assert torch.equal(torch.as_tensor(state[key][name]), torch.as_tensor(value)), (key, name)


def make(compressor="randomk"):
    """A one-worker model and exchange whose per-tensor compressor state (random-k's step counter or Signum's
    momentum) and residuals are both non-empty after a step."""
    torch.manual_seed(0)
    model = torch.nn.Linear(40, 30)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    exchange = Exchange(list(model.named_parameters()), InProcessGroup(1).communicator(0),
                        COMPRESSORS[compressor](), ResidualMemory())
    return model, optimizer, scheduler, exchange


def save_epochs(folder, epochs, compressor="randomk"):
    model, optimizer, scheduler, exchange = make(compressor)
    for epoch in range(1, epochs + 1):
        model.weight.grad = torch.full_like(model.weight, epoch + 0.5)
        exchange.finish([exchange.start("weight", model.weight.grad)])
        with torch.no_grad():
            model.weight.add_(1.0)
        ckpt.save(folder / "checkpoint.pt", folder, 0, 1, epoch, "cfg", model, optimizer, scheduler, exchange,
                  [{"epoch": e} for e in range(1, epoch + 1)], barrier=lambda: None)
    return model


@pytest.mark.parametrize("compressor", ["randomk", "signum"])
@pytest.mark.parametrize("broken", ["main", "rank"])
def test_resume_falls_back_to_the_previous_checkpoint_when_the_newest_is_corrupt(tmp_path, broken, compressor):
    save_epochs(tmp_path, 3, compressor)
    saved = ckpt.load(tmp_path / "rank0.epoch2.pt")["exchange"]
    assert sorted(p.name for p in tmp_path.glob("rank0.*")) == ["rank0.epoch2.pt", "rank0.epoch3.pt"]
    victim = tmp_path / ("checkpoint.pt" if broken == "main" else "rank0.epoch3.pt")
    victim.write_bytes(victim.read_bytes()[:100])
    model, optimizer, scheduler, exchange = make(compressor)
    votes = []
    with pytest.warns(UserWarning, match="unusable on some rank.*resuming from the previous one"):
        epoch, history = ckpt.resume(tmp_path / "checkpoint.pt", tmp_path, 0, 1, "cfg", model, optimizer, scheduler,
                                     exchange, all_ok=lambda ok: votes.append(ok) or ok)
    assert (epoch, len(history), votes) == (2, 2, [False, True])
    torch.testing.assert_close(model.weight, make()[0].weight + 2.0)      # epoch 2: two steps of +1
    assert torch.equal(exchange.memory.buffers["residuals"]["weight"], saved["memory"]["residuals"]["weight"])
    assert exchange.memory.buffers["residuals"]["weight"].any()
    assert_same_compressor_state(exchange, saved["compressor"])     # epoch 2's: not epoch 3's, not fresh
    if compressor == "randomk":
        assert exchange.compressor.steps == {"weight": 2}


def test_resume_refuses_when_no_checkpoint_is_usable(tmp_path):
    save_epochs(tmp_path, 2)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (tmp_path / name).write_bytes(b"garbage")
    with pytest.raises(ckpt.ResumeError, match="no usable checkpoint"), pytest.warns(UserWarning):
        ckpt.resume(tmp_path / "checkpoint.pt", tmp_path, 0, 1, "cfg", *make(), all_ok=lambda ok: ok)
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"garbage", "nothing may be changed"
