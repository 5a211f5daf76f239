"""A user's own network, offered to netadapt through the ``netadapt.models`` entry-point group.

``SmallSENet`` has what product networks have and MobileNetV1 lacks: residual adds, a
squeeze-and-excitation block, Hardswish activations and a depthwise stage.
"""

from __future__ import annotations

from torch import Tensor, nn


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, max(4, channels // reduction), 1)
        self.act = nn.ReLU()
        self.expand = nn.Conv2d(max(4, channels // reduction), channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class Block(nn.Module):
    """conv-bn-hardswish, depthwise conv-bn, SE, plus the identity."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.Hardswish())
        self.depthwise = nn.Sequential(nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False),
                                       nn.BatchNorm2d(hidden), nn.Hardswish())
        self.se = SqueezeExcite(hidden)
        self.project = nn.Sequential(nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.project(self.se(self.depthwise(self.expand(x))))


class SmallSENet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16, blocks: int = 2) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.Hardswish())
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * width),
                                  nn.Hardswish())
        self.blocks = nn.Sequential(*(Block(2 * width, 4 * width) for _ in range(blocks)))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(2 * width, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.down(self.stem(x))))


def build_senet(num_classes: int = 10, in_channels: int = 3, width: int = 16, blocks: int = 2) -> nn.Module:
    """The factory netadapt calls: it passes num_classes and in_channels; width and blocks come
    from ``model.kwargs``."""
    return SmallSENet(num_classes, in_channels, width, blocks)
