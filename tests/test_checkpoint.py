"""Checkpoint files in one process: checksums catch truncation and alteration, a full disk leaves the old
file, resuming falls back to the previous checkpoint together on every rank, and a different number of
workers (or of ranks keeping residuals) gets the residuals redistributed with their sum preserved."""
import errno
import os

import pytest
import torch

from dgc.compressors.topk import TopKCompressor
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


def test_redistribution_preserves_the_sum_of_residuals():
    gen = torch.Generator().manual_seed(0)
    olds = [{"compressor": {"r": r}, "memory": {"residuals": {"w": torch.randn(50, generator=gen)}},
             "skipped_steps": 0} for r in range(2)]
    total = olds[0]["memory"]["residuals"]["w"] + olds[1]["memory"]["residuals"]["w"]
    for world in (1, 3):
        news = [ckpt.redistribute(olds, rank, world) for rank in range(world)]
        torch.testing.assert_close(sum(n["memory"]["residuals"]["w"] for n in news), total, rtol=0, atol=1e-6)
        assert [n["compressor"]["r"] for n in news] == [r % 2 for r in range(world)]
    assert torch.equal(olds[0]["memory"]["residuals"]["w"] + olds[1]["memory"]["residuals"]["w"], total), \
        "the old states were modified"


def test_hierarchical_redistribution_gives_the_sum_to_the_new_leaders_only():
    """Hierarchical runs keep residuals on each host's leader only: 2 hosts x 2 ranks (leaders 0 and 2) resumed
    as 2 hosts x 3 ranks (leaders 0 and 3) or 3 hosts x 2 ranks (leaders 0, 2, 4): the new leaders share the
    old leaders' sum, the other ranks get none (they never use it, so a share there would be lost)."""
    gen = torch.Generator().manual_seed(1)
    olds = [{"compressor": {}, "memory": {"residuals": {"w": torch.randn(50, generator=gen)} if r in (0, 2) else {}},
             "skipped_steps": 0} for r in range(4)]
    total = olds[0]["memory"]["residuals"]["w"] + olds[2]["memory"]["residuals"]["w"]
    for world, leaders in ((6, [0, 3]), (6, [0, 2, 4]), (4, [0, 1])):
        news = [ckpt.redistribute(olds, rank, world, leaders) for rank in range(world)]
        assert [bool(n["memory"]["residuals"]) for n in news] == [r in leaders for r in range(world)]
        torch.testing.assert_close(sum(news[r]["memory"]["residuals"]["w"] for r in leaders), total, rtol=0, atol=1e-6)


def test_resume_redistributes_when_the_leaders_changed_at_the_same_world_size(tmp_path):
    """Same number of workers, other ranks keeping residuals (hosts regrouped): each rank's own file would
    leave a new leader empty and the old one's residuals unused, so they are redistributed."""
    save_epochs(tmp_path, 1)
    saved = ckpt.load(tmp_path / "rank0.epoch1.pt")["exchange"]["memory"]["residuals"]["weight"]
    assert saved.any()
    model, optimizer, scheduler, exchange = make()
    with pytest.warns(UserWarning, match=r"residuals on ranks all.*residuals on ranks \[0\].*redistributed"):
        ckpt.resume(tmp_path / "checkpoint.pt", tmp_path, 0, 1, "cfg", model, optimizer, scheduler, exchange,
                    all_ok=lambda ok: ok, leaders=[0])
    assert torch.equal(exchange.memory.buffers["residuals"]["weight"], saved)


def make(rank=0):
    torch.manual_seed(0)
    model = torch.nn.Linear(40, 30)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1)
    exchange = Exchange(list(model.named_parameters()), InProcessGroup(1).communicator(0),
                        TopKCompressor(0.1, min_compress_numel=100), ResidualMemory())
    return model, optimizer, scheduler, exchange


def save_epochs(folder, epochs):
    model, optimizer, scheduler, exchange = make()
    for epoch in range(1, epochs + 1):
        model.weight.grad = torch.full_like(model.weight, float(epoch))
        exchange.finish([exchange.start("weight", model.weight.grad)])
        with torch.no_grad():
            model.weight.add_(1.0)
        ckpt.save(folder / "checkpoint.pt", folder, 0, 1, epoch, "cfg", model, optimizer, scheduler, exchange,
                  [{"epoch": e} for e in range(1, epoch + 1)], barrier=lambda: None)
    return model


@pytest.mark.parametrize("broken", ["main", "rank"])
def test_resume_falls_back_to_the_previous_checkpoint_when_the_newest_is_corrupt(tmp_path, broken):
    save_epochs(tmp_path, 3)
    assert sorted(p.name for p in tmp_path.glob("rank0.*")) == ["rank0.epoch2.pt", "rank0.epoch3.pt"]
    victim = tmp_path / ("checkpoint.pt" if broken == "main" else "rank0.epoch3.pt")
    victim.write_bytes(victim.read_bytes()[:100])
    model, optimizer, scheduler, exchange = make()
    votes = []
    with pytest.warns(UserWarning, match="unusable on some rank.*resuming from the previous one"):
        epoch, history = ckpt.resume(tmp_path / "checkpoint.pt", tmp_path, 0, 1, "cfg", model, optimizer, scheduler,
                                     exchange, all_ok=lambda ok: votes.append(ok) or ok)
    assert (epoch, len(history), votes) == (2, 2, [False, True])
    torch.testing.assert_close(model.weight, make()[0].weight + 2.0)      # epoch 2: two steps of +1
    assert exchange.memory.buffers["residuals"]["weight"].any()


def test_resume_refuses_when_no_checkpoint_is_usable(tmp_path):
    save_epochs(tmp_path, 2)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        (tmp_path / name).write_bytes(b"garbage")
    with pytest.raises(ckpt.ResumeError, match="no usable checkpoint"), pytest.warns(UserWarning):
        ckpt.resume(tmp_path / "checkpoint.pt", tmp_path, 0, 1, "cfg", *make(), all_ok=lambda ok: ok)
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"garbage", "nothing may be changed"
