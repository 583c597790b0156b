"""ResNets for CIFAR-10 as described by He et al. 2016, "Deep Residual Learning
for Image Recognition", section 4.2.

The network is a 3x3 convolution with 16 filters, three stages of ``n`` basic
blocks with 16, 32 and 64 filters (depth ``6n + 2``), global average pooling and
a linear classifier. Shortcuts are parameter-free ("option A"): when the shape
changes the input is subsampled with stride 2 and zero-padded in the channel
dimension, which keeps ResNet-20 at the paper's 0.27M parameters.
"""

import torch.nn as nn
import torch.nn.functional as F

from .init import kaiming_init

__all__ = ["CifarResNet", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]


class ShortcutA(nn.Module):
    """Identity shortcut with strided subsampling and zero-padded extra channels."""

    def __init__(self, in_planes, planes, stride):
        super().__init__()
        self.stride = stride
        self.pad = planes - in_planes

    def forward(self, x):
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection (He et al. 2016, fig. 2)."""

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut = ShortcutA(in_planes, planes, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth ``6n + 2`` for 3x32x32 inputs."""

    def __init__(self, depth, num_classes=10):
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (e.g. 20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers = []
        in_planes = 16
        for stage, planes in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)
        kaiming_init(self)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


def resnet20(num_classes=10):
    """ResNet-20 (n=3), 0.27M parameters."""
    return CifarResNet(20, num_classes)


def resnet32(num_classes=10):
    """ResNet-32 (n=5)."""
    return CifarResNet(32, num_classes)


def resnet44(num_classes=10):
    """ResNet-44 (n=7)."""
    return CifarResNet(44, num_classes)


def resnet56(num_classes=10):
    """ResNet-56 (n=9)."""
    return CifarResNet(56, num_classes)


def resnet110(num_classes=10):
    """ResNet-110 (n=18)."""
    return CifarResNet(110, num_classes)
