"""The seeds' three nets and one fast modern net.

Every model takes ``in_channels``, ``image_size`` and ``num_classes`` from the data
config, so any model runs on any dataset. With the seeds' shapes (3×32×32 or
1×32×32, 10 classes) the layers are exactly the ones in the seed notes.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class TuduiCNN(nn.Module):
    """The seeds' CIFAR-10 CNN ("Tudui"): no activations, only max-pooling between layers."""

    def __init__(self, in_channels: int = 3, image_size: int = 32, num_classes: int = 10):
        super().__init__()
        side = image_size // 8
        self.model1 = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, padding=2),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 5, padding=2),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * side * side, 64),  # 1024 for 32×32 inputs
            nn.Linear(64, num_classes),
        )

    def forward(self, x):
        return self.model1(x)


class LeNet(nn.Module):
    """The first seed's LeNet-style net (unpadded 5×5 convolutions)."""

    def __init__(self, in_channels: int = 3, image_size: int = 32, num_classes: int = 10):
        super().__init__()
        side = ((image_size - 4) // 2 - 4) // 2
        self.model = nn.Sequential(
            nn.Conv2d(in_channels, 16, 5),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(16, 32, 5),
            nn.MaxPool2d(2, 2),
            nn.Flatten(),
            nn.Linear(32 * side * side, 120),  # 800 for 32×32 inputs
            nn.Linear(120, 84),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.model(x)


class ReluCNN(nn.Module):
    """Seed 004's net: two padded 5×5 convs with ReLU and max-pooling, then a ReLU MLP."""

    def __init__(self, in_channels: int = 1, image_size: int = 32, num_classes: int = 10):
        super().__init__()
        side = image_size // 4
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=5, stride=1, padding=2)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5, stride=1, padding=2)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        self.fc1 = nn.Linear(64 * side * side, 120)  # 4096 for 32×32 inputs
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = x.flatten(1)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU()]


class FastNet(nn.Module):
    """A small fast CNN in the spirit of airbench: conv-BN-GELU stages with max-pooling."""

    def __init__(
        self,
        in_channels: int = 3,
        image_size: int = 32,
        num_classes: int = 10,
        widths: Sequence[int] = (32, 64, 128),
    ):
        super().__init__()
        layers: list[nn.Module] = _conv_bn(in_channels, widths[0])
        c = widths[0]
        for w in widths:
            layers += [*_conv_bn(c, w), nn.MaxPool2d(2), *_conv_bn(w, w)]
            c = w
        layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(c, num_classes, bias=False)]
        self.net = nn.Sequential(*layers)
        del image_size  # any size works: the head pools globally

    def forward(self, x):
        return self.net(x)
