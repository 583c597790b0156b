"""Datasets the trainer knows: the embedded 8x8 digits, CIFAR-10/100, ImageFolder trees (ImageNet).

Each builder returns ``{"train": Dataset, "test": Dataset}`` and raises :class:`DatasetMissing` naming
the folder and the files it expected, before any training starts.
"""
import pathlib
import random

import numpy as np
import torch
from torchvision import datasets, transforms

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


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


def cifar(root, num_classes=10, download=False, augment=True):
    """CIFAR-10/100 from ``root``: an ImageFolder tree (``root/train/<class>/*.jpg``, ``root/test/...``,
    e.g. the JPEG copy in ../shared/data) or torchvision's binary release (downloaded if ``download``).
    Training augmentation as in He et al. 2016: 4-pixel padded random crop and horizontal flip."""
    root = pathlib.Path(root)
    normalize = transforms.Normalize(CIFAR_MEAN, CIFAR_STD)
    train_tf = transforms.Compose(([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()]
                                   if augment else []) + [transforms.ToTensor(), normalize])
    test_tf = transforms.Compose([transforms.ToTensor(), normalize])
    if (root / "train").is_dir() and (root / "test").is_dir():
        found = {"train": datasets.ImageFolder(root / "train", train_tf),
                 "test": datasets.ImageFolder(root / "test", test_tf)}
        if len(found["train"].classes) != num_classes:
            raise DatasetMissing(f"{root / 'train'} has {len(found['train'].classes)} class folders, "
                                 f"the config expects num_classes={num_classes}")
        return found
    cls = {10: datasets.CIFAR10, 100: datasets.CIFAR100}.get(num_classes)
    if cls is None:
        raise ValueError(f"cifar: num_classes={num_classes!r}; CIFAR has 10 or 100")
    try:
        return {"train": cls(str(root), train=True, transform=train_tf, download=download),
                "test": cls(str(root), train=False, transform=test_tf, download=download)}
    except RuntimeError as error:
        folder = "cifar-10-batches-py" if num_classes == 10 else "cifar-100-python"
        raise DatasetMissing(
            f"CIFAR-{num_classes} not found in {root}: expected either an ImageFolder tree "
            f"({root}/train/<class>/*.jpg and {root}/test/<class>/*.jpg; for the JPEG copy run "
            f"`bash scripts/get_cifar10.sh {root}`) or torchvision's {root}/{folder}/ "
            f"(set dataset.download=True when online). torchvision said: {error}") from None


def image_folder(root, image_size=224, train_dir="train", test_dir="val"):
    """An ImageNet-style tree ``root/train/<class>/*`` and ``root/val/<class>/*`` with the standard
    random-resized-crop / flip training transform and resize + center-crop evaluation."""
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


def seed_rank(seed, rank):
    """Seed this rank's random draws (augmentation crops and flips, DGC's sample offsets) differently from
    every other rank's, reproducibly: ranks that drew the same crops would waste part of the batch."""
    seed = seed * 1000 + rank
    torch.manual_seed(seed)
    np.random.seed(seed % 2 ** 32)
    random.seed(seed)


def subset(dataset, fraction):
    """The first ``fraction`` of a dataset in a fixed random order (quick smoke runs)."""
    if fraction >= 1:
        return dataset
    keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:max(1, int(len(dataset) * fraction))]
    return torch.utils.data.Subset(dataset, keep.tolist())


def loaders(data, batch_size, rank, world_size, num_workers, seed):
    """Each rank reads its own shard: shuffled DistributedSampler for training, and for evaluation a
    strided slice of the test set (no padding, so the ranks together see every test image exactly once)."""
    sampler = torch.utils.data.distributed.DistributedSampler(
        data["train"], num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
    train = torch.utils.data.DataLoader(data["train"], batch_size=batch_size, sampler=sampler,
                                        num_workers=num_workers, persistent_workers=num_workers > 0,
                                        drop_last=True)
    test_shard = torch.utils.data.Subset(data["test"], list(range(rank, len(data["test"]), world_size)))
    test = torch.utils.data.DataLoader(test_shard, batch_size=batch_size * 2, num_workers=num_workers,
                                       persistent_workers=num_workers > 0)
    return train, sampler, test
