"""Weight initialisation shared by the CIFAR models."""
from torch import nn


def kaiming_init(model):
    """Kaiming-normal convolutions (He et al. 2015, fan-out for ReLU), BatchNorm scale 1 and shift 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
