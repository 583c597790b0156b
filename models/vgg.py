"""VGG-16 with BatchNorm for 32x32 inputs (Simonyan & Zisserman 2015).

The thirteen 3x3 conv layers of configuration D, each followed by BatchNorm and
ReLU, reduce a 32x32 image to 1x1x512 after five max-pools; the common CIFAR
variant then uses a single linear classifier instead of the three large
fully-connected layers of the ImageNet model.
"""

import torch.nn as nn

from .init import kaiming_init

__all__ = ["VGG", "vgg16"]

VGG16_CONFIG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGG(nn.Module):
    """VGG feature extractor built from ``config`` plus a linear classifier."""

    def __init__(self, config, num_classes=10):
        super().__init__()
        layers = []
        in_channels = 3
        for v in config:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_channels, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                in_channels = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_channels, num_classes)
        kaiming_init(self)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def vgg16(num_classes=10):
    """VGG-16 with BatchNorm for CIFAR-sized (3x32x32) inputs."""
    return VGG(VGG16_CONFIG, num_classes)
