"""The built-in networks: MobileNetV1 (width multiplier), torchvision's MobileNetV2 with a small-image
stem, and a tiny CNN for tests.

Each factory takes ``num_classes`` and ``in_channels`` (set from the data set) plus its own
arguments (``model.kwargs``: ``width_mult``, ``first_stride``, ``dropout``); the defaults suit
28-32 px images (stem stride 1)::

    model = build_model("mobilenet_v1", num_classes=10, in_channels=1, width_mult=0.5)
"""

from __future__ import annotations

from torch import Tensor, nn

from ..registry import Registry

MODELS: Registry = Registry("model")  # built-ins and models registered from Python


def _make_divisible(value: float, divisor: int = 8) -> int:
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class MobileNetV1(nn.Module):
    """MobileNetV1 (Howard et al., 2017): a stem conv then 13 depthwise-separable blocks."""

    # (output channels at width 1.0, depthwise stride)
    BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]

    def __init__(
        self, num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0, first_stride: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels = _make_divisible(32 * width_mult)
        layers: list[nn.Module] = [_conv_bn_relu(in_channels, channels, 3, first_stride)]
        for out, stride in self.BLOCKS:
            out = _make_divisible(out * width_mult)
            layers.append(
                nn.Sequential(
                    *_conv_bn_relu(channels, channels, 3, stride, groups=channels),
                    *_conv_bn_relu(channels, out, 1, 1),
                )
            )
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.flatten(self.pool(self.features(x)))))


@MODELS.register("mobilenet_v1")
def mobilenet_v1(num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0, first_stride: int = 1,
                 dropout: float = 0.0) -> nn.Module:
    return MobileNetV1(num_classes, in_channels, width_mult, first_stride, dropout)


@MODELS.register("mobilenet_v2")
def mobilenet_v2(
    num_classes: int = 1000, in_channels: int = 3, width_mult: float = 1.0, first_stride: int = 1,
    dropout: float = 0.0,
) -> nn.Module:
    """torchvision's MobileNetV2 with the stem adapted to ``in_channels`` and ``first_stride``."""
    from torchvision.models import mobilenet_v2 as tv_mobilenet_v2

    model = tv_mobilenet_v2(num_classes=num_classes, width_mult=width_mult, dropout=dropout)
    stem = model.features[0][0]
    model.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, first_stride, 1, bias=False)
    return model


class TinyCNN(nn.Module):
    """A few-thousand-parameter CNN with a residual add: the real code paths at test speed."""

    def __init__(
        self, num_classes: int = 10, in_channels: int = 1, width_mult: float = 1.0, first_stride: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        c1, c2, c3 = (_make_divisible(c * width_mult, 4) for c in (8, 16, 32))
        self.stem = _conv_bn_relu(in_channels, c1, 3, first_stride)
        self.down = _conv_bn_relu(c1, c2, 3, 2)
        self.res = nn.Sequential(nn.Conv2d(c2, c2, 3, 1, 1, bias=False), nn.BatchNorm2d(c2))
        self.res_act = nn.ReLU()
        self.head = _conv_bn_relu(c2, c3, 1, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(c3, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.down(self.stem(x))
        x = self.res_act(x + self.res(x))
        return self.classifier(self.dropout(self.flatten(self.pool(self.head(x)))))


@MODELS.register("tiny_cnn")
def tiny_cnn(num_classes: int = 10, in_channels: int = 1, width_mult: float = 1.0, first_stride: int = 1,
             dropout: float = 0.0) -> nn.Module:
    return TinyCNN(num_classes, in_channels, width_mult, first_stride, dropout)
