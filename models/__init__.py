"""Models used by the trainer: CIFAR ResNets (He et al. 2016), VGG-16 with
BatchNorm (Simonyan & Zisserman 2015), a small digits CNN, and any
torchvision classification model by name."""

from .cifar_resnet import CifarResNet, resnet20, resnet32, resnet44, resnet56, resnet110
from .digits import DigitsNet
from .vgg import vgg16

__all__ = [
    "CifarResNet",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "vgg16",
    "DigitsNet",
    "torchvision_model",
]


def torchvision_model(name, **kwargs):
    """Build ``torchvision.models.<name>(**kwargs)`` with random weights (no download). torchvision is imported
    here, not with the package: it takes seconds (its detection ops load torch._dynamo), which every rank of a
    CIFAR or digits run would pay."""
    import torchvision
    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ValueError(
            f"unknown torchvision model {name!r}; valid names include {', '.join(sorted(available)[:8])}, ..."
        )
    kwargs.setdefault("weights", None)
    return getattr(torchvision.models, name)(**kwargs)
