"""Small CNN for 1x8x8 grayscale digits (scikit-learn's digits data set).

It is quick to train on CPU, and its 1024->128 hidden layer (131,072 weights)
is large enough to be gradient-compressed, so it exercises the sparse path.
"""

import torch.nn as nn

__all__ = ["DigitsNet"]


class DigitsNet(nn.Module):
    """Two conv-BN-ReLU layers, a 2x2 max-pool and a two-layer classifier."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(0.25),
            nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))
