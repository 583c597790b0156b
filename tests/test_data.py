"""training.data: CIFAR's uint8 cache (built once, checksummed, rebuilt when wrong, one builder at a time),
the device-side loader (DistributedSampler's shards, batched crop + flip, torchvision's normalisation) and
the DataLoader path (pinned, prefetching, batches on the device)."""
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import datasets, transforms

from training import data


def fake_tree(root, per_class=5, classes=("cat", "dog"), seed=0):
    """A CIFAR-like ImageFolder tree of 32x32 RGB images, PNG and JPEG mixed: ``root/{train,test}/<class>/``."""
    rng = np.random.default_rng(seed)
    for split in ("train", "test"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


def decoded_by_pil(folder):
    """The tree's images as PIL (hence ImageFolder) decodes them, uint8 [N, 3, 32, 32], in ImageFolder order."""
    found = datasets.ImageFolder(folder)
    return torch.stack([torch.from_numpy(np.asarray(Image.open(p).convert("RGB"))).permute(2, 0, 1)
                        for p, _ in found.samples]), torch.tensor(found.targets)


def cache_files(folder):
    return sorted(p for p in folder.glob("*.pt"))


def test_cache_is_built_once_and_read_back(tmp_path, monkeypatch):
    tree, cache = fake_tree(tmp_path / "tree"), tmp_path / "cache"
    found = data.cifar(tree, num_classes=2, cache=cache)
    for split in ("train", "test"):
        images, labels = decoded_by_pil(tree / split)
        assert isinstance(found[split], data.ImageTensors) and found[split].classes == ["cat", "dog"]
        assert torch.equal(found[split].images, images) and torch.equal(found[split].labels, labels)
    assert found["train"].augment and not found["test"].augment
    files = cache_files(cache)
    assert [f.name.split("-")[:2] for f in files] == [["tree", "test"], ["tree", "train"]]
    saved = torch.load(files[1], weights_only=True)
    assert saved["checksum"] == data.tensors_checksum(saved["images"], saved["labels"])

    def no_decoding(found):
        raise AssertionError(f"decoded {found.root} again although its cache is valid")
    monkeypatch.setattr(data, "decode_folder", no_decoding)
    again = data.cifar(tree, num_classes=2, cache=cache)
    assert torch.equal(again["train"].images, found["train"].images)


def test_a_changed_tree_gets_a_new_cache(tmp_path):
    tree, cache = fake_tree(tmp_path / "tree"), tmp_path / "cache"
    data.cifar(tree, num_classes=2, cache=cache)
    Image.fromarray(np.full((32, 32, 3), 7, dtype=np.uint8)).save(tree / "train" / "dog" / "1.png")
    found = data.cifar(tree, num_classes=2, cache=cache)
    assert len(cache_files(cache)) == 3
    assert torch.equal(found["train"].images, decoded_by_pil(tree / "train")[0])
    assert (found["train"].images == 7).all(dim=(1, 2, 3)).sum() == 1


@pytest.mark.parametrize("damage", ["tampered", "truncated"])
def test_a_cache_that_fails_its_checksum_is_rebuilt_with_a_warning(damage, tmp_path):
    tree, cache = fake_tree(tmp_path / "tree"), tmp_path / "cache"
    data.cifar(tree, num_classes=2, cache=cache)
    path = next(p for p in cache_files(cache) if "-train-" in p.name)
    if damage == "tampered":
        state = torch.load(path, weights_only=True)
        state["images"][0, 0, 0, 0] ^= 1
        torch.save(state, path)
    else:
        path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(RuntimeWarning, match=f"{path.name}.*rebuilding"):
        found = data.cifar(tree, num_classes=2, cache=cache)
    assert torch.equal(found["train"].images, decoded_by_pil(tree / "train")[0])
    state = torch.load(path, weights_only=True)
    assert state["checksum"] == data.tensors_checksum(state["images"], state["labels"])


def test_a_second_builder_waits_for_the_first_and_reads_its_file(tmp_path):
    """Two ranks starting together: the second blocks on the lock while the first builds, then reads what the
    first wrote instead of building (or reading half a file)."""
    path, entered, release, results = tmp_path / "cache" / "x.pt", threading.Event(), threading.Event(), {}
    tensors = {"images": torch.ones(2, 3, 4, 4, dtype=torch.uint8), "labels": torch.tensor([0, 1]), "classes": ["a"]}

    def slow_build():
        entered.set()
        release.wait(30)
        return dict(tensors)

    def second_build():
        raise AssertionError("the second builder built although the first was building")

    first = threading.Thread(target=lambda: results.update(first=data.cached(path, slow_build)))
    second = threading.Thread(target=lambda: results.update(second=data.cached(path, second_build)))
    first.start()
    assert entered.wait(30)
    second.start()
    second.join(0.5)
    assert second.is_alive(), "the second builder did not wait for the first"
    release.set()
    first.join(30)
    second.join(30)
    assert torch.equal(results["second"]["images"], tensors["images"])
    assert results["second"]["checksum"] == results["first"]["checksum"]
    assert not list(path.parent.glob("*.tmp*"))


def test_the_binary_release_becomes_image_tensors(tmp_path, monkeypatch):
    """torchvision's CIFAR classes hold uint8 [N, H, W, C] arrays: used directly, channels first."""
    pixels = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)

    class Release:
        def __init__(self, root, train, download):
            self.data, self.targets, self.classes = pixels, [0, 1, 2, 0, 1, 2], ["a", "b", "c"]
    monkeypatch.setattr(datasets, "CIFAR10", Release)
    found = data.cifar(tmp_path, num_classes=10)
    assert torch.equal(found["train"].images, torch.from_numpy(pixels).permute(0, 3, 1, 2))
    assert found["train"].images.is_contiguous() and found["train"].augment and not found["test"].augment
    assert found["test"].labels.tolist() == [0, 1, 2, 0, 1, 2]


def numbered(n, augment=True):
    """``n`` random images whose labels are their indices (so a batch says which images it holds)."""
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(n))
    return data.ImageTensors(images, torch.arange(n), [str(i) for i in range(10)], augment=augment)


def test_train_shards_are_distributed_samplers_and_cover_the_epoch(device):
    images, batch, world = numbered(48), 4, 2
    for epoch in (0, 1):
        seen = []
        for rank in range(world):
            train, sampler, _ = data.loaders({"train": images, "test": images}, batch, rank, world, 0, 7, device)
            sampler.set_epoch(epoch)
            reference = torch.utils.data.distributed.DistributedSampler(images, world, rank, True, 7, True)
            reference.set_epoch(epoch)
            labels = [y for _, y in train]
            assert len(labels) == len(train) == 48 // world // batch and all(len(y) == batch for y in labels)
            assert torch.cat(labels).tolist() == list(reference)
            seen += torch.cat(labels).tolist()
        assert sorted(seen) == list(range(48))
        if epoch == 0:
            first = seen
    assert seen != first, "set_epoch did not reshuffle"


def test_whole_batches_only_as_distributed_sampler_drops(device):
    images = numbered(23)
    train, sampler, _ = data.loaders({"train": images, "test": images}, 5, 1, 2, 0, 0, device)
    assert len(train) == 2 and [len(y) for _, y in train] == [5, 5]
    assert torch.cat([y for _, y in train]).tolist() == list(sampler)[:10]


def test_crop_flip_matches_a_per_image_reference(device):
    images = numbered(64).images.to(device)
    top, left, flip = data.draw_crops_flips(64, torch.Generator(device).manual_seed(3), device)
    assert top.device == flip.device == images.device
    assert set(top.tolist()) | set(left.tolist()) == set(range(9)) and 0 < flip.sum() < 64
    out = data.crop_flip(images, top, left, flip)
    for i in range(64):
        padded = torch.nn.functional.pad(images[i], (4, 4, 4, 4))
        crop = padded[:, top[i]:top[i] + 32, left[i]:left[i] + 32]
        assert torch.equal(out[i], crop.flip(-1) if flip[i] else crop), i


def test_loader_augments_on_the_device_with_per_rank_reproducible_draws(device):
    """Each batch is its images cropped and flipped by draws from the rank's generator (seed_rank's seed,
    advanced by the epoch), then normalised: other draws for another rank or epoch, the same again."""
    images = numbered(32)

    def epoch(rank, number):
        train, sampler, _ = data.loaders({"train": images, "test": images}, 8, rank, 2, 0, 5, device)
        sampler.set_epoch(number)
        return list(train)

    def drawn(batches, rank, number):
        generator = torch.Generator(device).manual_seed((data.rank_seed(5, rank) << 20) + number)
        return [data.normalize(data.crop_flip(images.images[y.cpu()].to(device),
                                              *data.draw_crops_flips(len(y), generator, device)),
                               data.CIFAR_MEAN, data.CIFAR_STD) for _, y in batches]

    def same(batches, expected):
        return all(torch.equal(x, e) for (x, _), e in zip(batches, expected))

    for rank, number in ((0, 0), (1, 0), (1, 1)):
        batches = epoch(rank, number)
        x, y = batches[0]
        assert x.device.type == y.device.type == device.type and x.dtype == torch.float32 and y.dtype == torch.int64
        assert len(batches) == 2 and same(batches, drawn(batches, rank, number))
        assert not same(batches, drawn(batches, 1 - rank, number)) and not same(batches, drawn(batches, rank, 1 - number))
        assert same(batches, [x for x, _ in epoch(rank, number)])
        plain = [data.normalize(images.images[y.cpu()].to(device), data.CIFAR_MEAN, data.CIFAR_STD) for _, y in batches]
        assert not same(batches, plain), "no image was cropped or flipped"


def test_test_loader_covers_every_image_once_across_ranks_unaugmented(tmp_path, device):
    tree = fake_tree(tmp_path / "tree", per_class=11)
    found = data.cifar(tree, num_classes=2, cache=tmp_path / "cache")
    reference = datasets.ImageFolder(tree / "test", transforms.Compose([
        transforms.ToTensor(), transforms.Normalize(data.CIFAR_MEAN, data.CIFAR_STD)]))
    seen = []
    for rank in range(3):
        _, _, test = data.loaders(found, 2, rank, 3, 0, 0, device)
        batches = list(test)
        assert len(batches) == len(test) and all(len(y) == 4 for _, y in batches[:-1])
        for x, y in batches:
            assert x.device.type == device.type and x.dtype == torch.float32
        x, y = torch.cat([x for x, _ in batches]).cpu(), torch.cat([y for _, y in batches]).cpu()
        for position, index in enumerate(range(rank, 22, 3)):
            image, label = reference[index]
            assert torch.allclose(x[position], image, rtol=0, atol=1e-6) and y[position] == label
            seen.append(index)
    assert sorted(seen) == list(range(22))


def test_normalisation_is_torchvisions():
    images = numbered(4, augment=False)
    expected = torch.stack([transforms.Normalize(data.CIFAR_MEAN, data.CIFAR_STD)(transforms.ToTensor()(
        images.images[i].permute(1, 2, 0).numpy())) for i in range(4)])
    assert torch.equal(data.normalize(images.images, data.CIFAR_MEAN, data.CIFAR_STD), expected)
    assert torch.equal(images[2][0], expected[2])


def test_subset_keeps_image_tensors_and_picks_what_a_torch_subset_picks():
    images = numbered(40)
    small = data.subset(images, 0.25)
    plain = data.subset(torch.utils.data.TensorDataset(images.images, images.labels), 0.25)
    assert isinstance(small, data.ImageTensors) and len(small) == 10 and small.augment
    assert small.labels.tolist() == plain.indices and torch.equal(small.images, images.images[plain.indices])


def test_other_datasets_go_through_pinned_prefetching_workers_to_the_device(device):
    digits = data.digits()
    train, sampler, test = data.loaders(digits, 16, 0, 2, 2, 0, device, prefetch_factor=3)
    for loader in (train.loader, test.loader):
        assert loader.prefetch_factor == 3 and loader.persistent_workers and loader.num_workers == 2
        assert loader.pin_memory == (device.type == "cuda")
    assert len(train) == len(digits["train"]) // 2 // 16 and train.loader.sampler is sampler
    train, _, test = data.loaders(digits, 16, 1, 2, 0, 0, device, prefetch_factor=3)
    x, y = next(iter(train))
    assert x.device.type == y.device.type == device.type and len(y) == 16
    assert sum(len(y) for _, y in test) == len(range(1, len(digits["test"]), 2))


def test_device_batches_make_the_host_wait_for_nothing():
    """Device-side batches run no op that would wait for a GPU (scalar reads, data-dependent sizes), so the
    host queues the next batch while the GPU still trains on the last. The training epoch's first batch is
    left out: it draws the sampler's permutation (on the host, with ``tolist``) and copies it over once."""
    host_syncs = pytest.importorskip("host_syncs", reason="tests/host_syncs.py is not in this checkout")
    images = numbered(48)
    train, sampler, test = data.loaders({"train": images, "test": images}, 8, 0, 2, 0, 0)
    sampler.set_epoch(1)
    batches = iter(train)
    next(batches)
    with host_syncs.HostSyncCounter() as syncs:
        count = sum(1 for _ in batches) + sum(1 for _ in test)
    assert count == 2 + 2 and syncs.ops == []


def test_an_unwritable_cache_folder_is_a_clear_error(tmp_path):
    tree = fake_tree(tmp_path / "tree")
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(data.DatasetMissing, match=r"image cache .*file/cache/tree-train-.*cannot be written"):
        data.cifar(tree, num_classes=2, cache=tmp_path / "file" / "cache")
    found = data.cifar(tree, num_classes=2, cache=None)
    assert torch.equal(found["train"].images, decoded_by_pil(tree / "train")[0])
