"""Datasets the trainer knows: the embedded 8x8 digits, CIFAR-10/100, ImageFolder trees (ImageNet).

Each builder returns ``{"train": Dataset, "test": Dataset}`` and raises :class:`DatasetMissing` naming
the folder and the files it expected, before any training starts. CIFAR comes as :class:`ImageTensors`
(uint8 images in memory, decoded once into a checksummed cache file), which :func:`loaders` batches,
crops, flips and normalises on the training device; the others go through DataLoader workers.
torchvision is imported by the builders that use it: importing it takes seconds, which a digits run's ranks
need not pay.
"""
import contextlib
import fcntl
import hashlib
import math
import os
import pathlib
import random
import warnings

import numpy as np
import torch

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CACHE_FORMAT = b"dgc-image-tensors-1"   # part of every cache digest: a new layout never reads an old file


class DatasetMissing(FileNotFoundError):
    """The dataset is not where the config says; the message says what to put there."""


def digits(test_fraction=0.2, seed=0):
    """The 1,797 8x8 handwritten digits that scikit-learn ships inside its package (UCI optdigits test set):
    real images, no download, 10 classes, an epoch in well under a second on a CPU."""
    from sklearn.datasets import load_digits
    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = (images - images.mean()) / images.std()
    labels = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    num_test = round(len(labels) * test_fraction)
    test, train = order[:num_test], order[num_test:]
    return {"train": torch.utils.data.TensorDataset(images[train], labels[train]),
            "test": torch.utils.data.TensorDataset(images[test], labels[test])}


class ImageTensors(torch.utils.data.Dataset):
    """Small images held as one uint8 tensor ``[N, C, H, W]`` with int64 labels; ``augment``: training
    augmentation as in He et al. 2016 (4-pixel padded random crop, horizontal flip). :func:`loaders` batches
    it on the device; indexing gives one normalised float image (global RNG) for any other DataLoader."""

    def __init__(self, images, labels, classes, augment=False, mean=CIFAR_MEAN, std=CIFAR_STD):
        if images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(labels):
            raise ValueError(f"ImageTensors: images must be uint8 [N, C, H, W] with one label each, got "
                             f"{images.dtype} {tuple(images.shape)} and {len(labels)} labels")
        self.images, self.labels, self.classes = images, labels, list(classes)
        self.augment, self.mean, self.std = augment, mean, std

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image = self.images[index:index + 1]
        if self.augment:
            image = crop_flip(image, *draw_crops_flips(1, None, image.device))
        return normalize(image, self.mean, self.std)[0], self.labels[index]

    def select(self, indices):
        """The same kind of dataset over ``indices`` (what :func:`subset` keeps)."""
        return ImageTensors(self.images[indices], self.labels[indices], self.classes, self.augment, self.mean,
                            self.std)


def draw_crops_flips(n, generator, device, padding=4):
    """Random crop offsets (top, left in ``[0, 2 * padding]``) and horizontal flips (p=1/2) for ``n``
    images, drawn on ``device`` from ``generator`` (None: the global one), as RandomCrop and
    RandomHorizontalFlip draw them."""
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=device)
    flips = torch.randint(0, 2, (n,), generator=generator, device=device).bool()
    return offsets[0], offsets[1], flips


def crop_flip(images, top, left, flip, padding=4):
    """Each image of ``images`` ``[N, C, H, W]`` zero-padded by ``padding``, cropped back to ``H x W`` at its
    own ``(top, left)`` and mirrored where ``flip``: batched ops (one gather of the crops from the padded
    batch's sliding windows, one select) on the images' device."""
    n, c, h, w = images.shape
    windows = torch.nn.functional.pad(images, (padding,) * 4).unfold(2, h, 1).unfold(3, w, 1)  # [N, C, 2p+1, 2p+1, H, W]
    crops = windows[torch.arange(n, device=images.device), :, top, left]
    return torch.where(flip[:, None, None, None], crops.flip(-1), crops)


def normalize(images, mean, std):
    """uint8 images to float32 in [0, 1], then per-channel ``(x - mean) / std``: ToTensor + Normalize's ops
    (``mean``, ``std``: sequences, or float32 tensors already on the images' device, which copies nothing)."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(-1, 1, 1)
    return images.to(torch.float32).div(255).sub_(mean).div_(std)


def tree_digest(found):
    """SHA-256 over an ImageFolder's class names and every file's path (within the tree), label, size and
    mtime: a changed, added or removed file gives another digest (so another cache file)."""
    digest = hashlib.sha256(CACHE_FORMAT)
    digest.update("\0".join(found.classes).encode())
    for path, label in found.samples:
        stat = os.stat(path)
        name = os.path.relpath(path, found.root)
        digest.update(f"\0{name}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def tensors_checksum(images, labels):
    """SHA-256 of the image and label bytes, stored with them and checked on every load."""
    digest = hashlib.sha256(images.contiguous().numpy())
    digest.update(labels.contiguous().numpy())
    return digest.hexdigest()


def decode_folder(found, size=(32, 32), chunk=2000):
    """Decode every image of the ImageFolder ``found`` (in its order) into ``{"images": uint8 [N, 3, H, W],
    "labels": int64 [N], "classes": [...]}``: files read whole, JPEG chunks through torchvision's batched
    decoder (the same pixels as PIL), anything else one by one."""
    from torchvision import io
    images = torch.empty(len(found.samples), 3, *size, dtype=torch.uint8)
    for start in range(0, len(found.samples), chunk):
        paths = [path for path, _ in found.samples[start:start + chunk]]
        raw = [io.read_file(path) for path in paths]
        if all(pathlib.Path(path).suffix.lower() in (".jpg", ".jpeg") for path in paths):
            decoded = io.decode_jpeg(raw, mode=io.ImageReadMode.RGB)
        else:
            decoded = [io.decode_image(data, mode=io.ImageReadMode.RGB) for data in raw]
        for offset, (path, image) in enumerate(zip(paths, decoded)):
            if tuple(image.shape[1:]) != tuple(size):
                raise DatasetMissing(f"{path} is {image.shape[2]}x{image.shape[1]} pixels; every image of "
                                     f"{found.root} must be {size[1]}x{size[0]}")
            images[start + offset] = image
    labels = torch.tensor([label for _, label in found.samples], dtype=torch.int64)
    return {"images": images, "labels": labels, "classes": found.classes}


@contextlib.contextmanager
def file_lock(path):
    """An exclusive ``flock`` on ``path`` (created if missing) for the ``with`` body: one process at a time."""
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_cache(path):
    """The tensors cached at ``path``, or None when there is none; a file that does not load or whose
    checksum does not match its tensors is reported (a warning naming it) and treated as none."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, weights_only=True)
        if state["checksum"] == tensors_checksum(state["images"], state["labels"]):
            return state
        problem = "its checksum does not match its tensors"
    except Exception as error:      # a truncated or foreign file: rebuild it, never train on it
        problem = f"it does not load ({type(error).__name__}: {error})"
    warnings.warn(f"image cache {path}: {problem}; rebuilding it", RuntimeWarning, stacklevel=3)
    return None


def cached(path, build):
    """The tensors ``build()`` returns, kept at ``path``: read when the file is there and its checksum
    holds, else built under ``path.lock`` (a second process starting alongside waits, then reads what the
    first wrote) and written atomically (a temporary file renamed), so no reader sees half a file."""
    path = pathlib.Path(path)
    state = read_cache(path)
    if state is not None:
        return state
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(path.with_name(path.name + ".lock")):
            if path.exists():
                state = read_cache(path)
                if state is not None:
                    return state
            state = build()
            state["checksum"] = tensors_checksum(state["images"], state["labels"])
            temporary = path.with_name(f"{path.name}.tmp{os.getpid()}")
            torch.save(state, temporary)
            os.replace(temporary, path)
            return state
    except OSError as error:
        if isinstance(error, DatasetMissing):
            raise
        raise DatasetMissing(f"image cache {path} cannot be written ({error.strerror or error}); point the "
                             "dataset's cache at a writable folder, or None to decode at every start") from None


def image_folder_tensors(folder, cache):
    """An ImageFolder split as tensors: decoded once into ``cache/<folder>-<split>-<digest>.pt`` (``cache``
    None: decoded every time, nothing written)."""
    from torchvision import datasets
    folder = pathlib.Path(folder)
    found = datasets.ImageFolder(folder)
    if cache is None:
        return decode_folder(found)
    return cached(pathlib.Path(cache) / f"{folder.parent.name}-{folder.name}-{tree_digest(found)[:20]}.pt",
                  lambda: decode_folder(found))


def cifar(root, num_classes=10, download=False, augment=True, cache="data/cache"):
    """CIFAR-10/100 from ``root``: an ImageFolder tree (``root/train/<class>/*.jpg``, ``root/test/...``,
    e.g. the JPEG copy in ../shared/data; decoded once into a uint8 tensor file under ``cache``) or
    torchvision's binary release (already uint8 arrays; downloaded if ``download``). ``augment``: training
    images randomly cropped and flipped (:class:`ImageTensors`)."""
    from torchvision import datasets
    root = pathlib.Path(root)
    if (root / "train").is_dir() and (root / "test").is_dir():
        found = {split: image_folder_tensors(root / split, cache) for split in ("train", "test")}
        if len(found["train"]["classes"]) != num_classes:
            raise DatasetMissing(f"{root / 'train'} has {len(found['train']['classes'])} class folders, "
                                 f"the config expects num_classes={num_classes}")
        return {split: ImageTensors(state["images"], state["labels"], state["classes"],
                                    augment=augment and split == "train") for split, state in found.items()}
    cls = {10: datasets.CIFAR10, 100: datasets.CIFAR100}.get(num_classes)
    if cls is None:
        raise ValueError(f"cifar: num_classes={num_classes!r}; CIFAR has 10 or 100")
    try:
        release = {split: cls(str(root), train=split == "train", download=download) for split in ("train", "test")}
    except RuntimeError as error:
        folder = "cifar-10-batches-py" if num_classes == 10 else "cifar-100-python"
        raise DatasetMissing(
            f"CIFAR-{num_classes} not found in {root}: expected either an ImageFolder tree "
            f"({root}/train/<class>/*.jpg and {root}/test/<class>/*.jpg; for the JPEG copy run "
            f"`bash scripts/get_cifar10.sh {root}`) or torchvision's {root}/{folder}/ "
            f"(set dataset.download=True when online). torchvision said: {error}") from None
    return {split: ImageTensors(torch.from_numpy(found.data).permute(0, 3, 1, 2).contiguous(),
                                torch.tensor(found.targets, dtype=torch.int64), found.classes,
                                augment=augment and split == "train") for split, found in release.items()}


def image_folder(root, image_size=224, train_dir="train", test_dir="val"):
    """An ImageNet-style tree ``root/train/<class>/*`` and ``root/val/<class>/*`` with the standard
    random-resized-crop / flip training transform and resize + center-crop evaluation."""
    from torchvision import datasets, transforms
    root = pathlib.Path(root)
    for part in (train_dir, test_dir):
        if not (root / part).is_dir():
            raise DatasetMissing(f"image folder dataset: {root / part} does not exist; expected "
                                 f"{root}/{train_dir}/<class>/<images> and {root}/{test_dir}/<class>/<images>")
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = transforms.Compose([transforms.RandomResizedCrop(image_size), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), normalize])
    test_tf = transforms.Compose([transforms.Resize(int(image_size * 256 / 224)), transforms.CenterCrop(image_size),
                                  transforms.ToTensor(), normalize])
    return {"train": datasets.ImageFolder(root / train_dir, train_tf),
            "test": datasets.ImageFolder(root / test_dir, test_tf)}


def rank_seed(seed, rank):
    """This rank's seed: distinct per rank, the same on every run."""
    return seed * 1000 + rank


def seed_rank(seed, rank):
    """Seed this rank's random draws (augmentation crops and flips, DGC's sample offsets) differently from
    every other rank's, reproducibly: ranks that drew the same crops would waste part of the batch."""
    seed = rank_seed(seed, rank)
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)


def subset(dataset, fraction):
    """The first ``fraction`` of a dataset in a fixed random order (quick smoke runs); an
    :class:`ImageTensors` stays one (so it is still batched on the device)."""
    if fraction >= 1:
        return dataset
    keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:max(1, int(len(dataset) * fraction))]
    if isinstance(dataset, ImageTensors):
        return dataset.select(keep)
    return torch.utils.data.Subset(dataset, keep.tolist())


class DeviceBatches:
    """Batches of an :class:`ImageTensors` assembled on ``device`` from a copy of its images there: the
    indices of ``order`` (a DistributedSampler, drawn again at each ``set_epoch``, or a fixed list) cut into
    batches, each gathered, cropped and flipped (when the dataset augments; draws from a generator seeded
    by ``seed`` and the sampler's epoch, so a resumed epoch draws as the first run did) and normalised."""

    def __init__(self, dataset, batch_size, device, order, drop_last, seed=0):
        self.images, self.labels = dataset.images.to(device), dataset.labels.to(device)
        self.augment = dataset.augment
        # on the device once: a per-batch host-to-device copy of them would wait for the queued GPU work
        self.mean, self.std = (torch.tensor(v, dtype=torch.float32, device=device) for v in (dataset.mean, dataset.std))
        self.batch_size, self.device, self.order, self.drop_last, self.seed = batch_size, device, order, drop_last, seed

    def __len__(self):
        count = len(self.order)
        return count // self.batch_size if self.drop_last else math.ceil(count / self.batch_size)

    def __iter__(self):
        indices = torch.tensor(list(self.order), dtype=torch.int64).to(self.device, non_blocking=True)
        generator = None
        if self.augment:
            epoch = getattr(self.order, "epoch", 0)
            generator = torch.Generator(self.device).manual_seed((self.seed << 20) + epoch)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            batch = indices[start:start + self.batch_size]
            images = self.images[batch]
            if self.augment:
                images = crop_flip(images, *draw_crops_flips(len(images), generator, self.device))
            yield normalize(images, self.mean, self.std), self.labels[batch]


class ToDevice:
    """A DataLoader whose ``(x, y)`` batches are moved to ``device`` as they come (``non_blocking``: from
    pinned memory the copy overlaps the work already queued on the GPU)."""

    def __init__(self, loader, device):
        self.loader, self.device = loader, device

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def loaders(data, batch_size, rank, world_size, num_workers, seed, device=torch.device("cpu"), **options):
    """Each rank reads its own shard: for training DistributedSampler's (shuffled, whole batches; returned
    for ``set_epoch``), for evaluation a strided slice of the test set in batches of twice ``batch_size``
    (no padding, so the ranks together see every test image exactly once). Batches arrive on ``device``:
    an :class:`ImageTensors` is batched and augmented there (:class:`DeviceBatches`, random draws seeded per
    rank); any other dataset goes through DataLoader workers (pinned memory when ``device`` is CUDA; the
    DataLoader ``options``, e.g. ``prefetch_factor``, used when there are workers)."""
    device = torch.device(device)
    sampler = torch.utils.data.distributed.DistributedSampler(
        data["train"], num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
    test_shard = range(rank, len(data["test"]), world_size)
    workers = {"num_workers": num_workers, "persistent_workers": num_workers > 0, "pin_memory": device.type == "cuda",
               **({key: value for key, value in options.items() if value is not None} if num_workers > 0 else {})}
    if isinstance(data["train"], ImageTensors):
        train = DeviceBatches(data["train"], batch_size, device, sampler, drop_last=True, seed=rank_seed(seed, rank))
    else:
        train = ToDevice(torch.utils.data.DataLoader(data["train"], batch_size=batch_size, sampler=sampler,
                                                     drop_last=True, **workers), device)
    if isinstance(data["test"], ImageTensors):
        test = DeviceBatches(data["test"], batch_size * 2, device, test_shard, drop_last=False)
    else:
        test = ToDevice(torch.utils.data.DataLoader(torch.utils.data.Subset(data["test"], list(test_shard)),
                                                    batch_size=batch_size * 2, **workers), device)
    return train, sampler, test
