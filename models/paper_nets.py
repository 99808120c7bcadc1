"""The QCFS paper's networks (Bu et al., ICLR 2022), as the parallel-conversion paper uses them:
VGG-16 and ResNet-18/20/34 with CIFAR-style stems, for 32×32 inputs, with QCFS or ReLU activations.

- VGG-16: five blocks of 3×3 conv-BN-act (64, 64 | 128, 128 | 256 ×3 | 512 ×3 | 512 ×3), each
  block closed by a 2×2 pooling (average pooling, as in the QCFS code; `pool="max"` for MaxPool),
  then Flatten and the classifier Linear(512, 4096)-act-Linear(4096, 4096)-act-Linear(4096, classes).
- ResNet-18/34: CIFAR stem (one 3×3 conv, stride 1, BN, act; no 7×7 conv, no MaxPool), BasicBlock
  stages of 64/128/256/512 channels ([2, 2, 2, 2] / [3, 4, 6, 3] blocks), strides 1/2/2/2,
  global average pooling, Linear(512, classes).
- ResNet-20: He et al.'s CIFAR ResNet: 3×3 stem of 16 channels, three stages of 3 BasicBlocks
  with 16/32/64 channels, strides 1/2/2, global average pooling, Linear(64, classes).

BasicBlock: conv3×3-BN-act-conv3×3-BN, plus the shortcut (identity, or 1×1 conv-BN where the shape
changes), then act. `width` scales every channel count (tests use small widths; 1.0 is the paper's).

Invariant: in eval mode every activation is a `models.qcfs.QCFS` (or nn.ReLU), so an ONNX export
contains only ops snncc converts; every MaxPool (with `pool="max"`) follows an activation.
"""

from __future__ import annotations

import torch
from torch import nn

from models.qcfs import make_activation

VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _scale(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class VGG16(nn.Module):
    def __init__(self, act: str = "qcfs", levels: int = 4, num_classes: int = 10, in_channels: int = 3,
                 width: float = 1.0, pool: str = "avg", hidden: int = 4096, dropout: float = 0.0,
                 theta: float = 8.0):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        layers: list[nn.Module] = []
        c = in_channels
        for block in VGG16_BLOCKS:
            for channels in block:
                out = _scale(channels, width)
                layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                           make_activation(act, levels, theta)]
                if dropout:
                    layers.append(nn.Dropout(dropout))
                c = out
            layers.append(nn.AvgPool2d(2) if pool == "avg" else nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        h = _scale(hidden, width)
        head: list[nn.Module] = [nn.Flatten(), nn.Linear(c, h), make_activation(act, levels, theta)]
        if dropout:
            head.append(nn.Dropout(dropout))
        head += [nn.Linear(h, h), make_activation(act, levels, theta)]
        if dropout:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(h, num_classes))
        self.classifier = nn.Sequential(*head)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, act: str, levels: int, theta: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
            make_activation(act, levels, theta),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
        )
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())
        self.act = make_activation(act, levels, theta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3×3 stem, BasicBlock stages, global average pooling, one Linear."""

    def __init__(self, blocks: tuple[int, ...], channels: tuple[int, ...], act: str = "qcfs", levels: int = 4,
                 num_classes: int = 10, in_channels: int = 3, width: float = 1.0, theta: float = 8.0):
        super().__init__()
        widths = [_scale(c, width) for c in channels]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), make_activation(act, levels, theta))
        stages = []
        c = widths[0]
        for i, (count, out) in enumerate(zip(blocks, widths)):
            stride = 1 if i == 0 else 2
            for j in range(count):
                stages.append(BasicBlock(c, out, stride if j == 0 else 1, act, levels, theta))
                c = out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.stages(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def vgg16(**kwargs) -> VGG16:
    return VGG16(**kwargs)


def resnet18(**kwargs) -> ResNet:
    return ResNet((2, 2, 2, 2), (64, 128, 256, 512), **kwargs)


def resnet34(**kwargs) -> ResNet:
    return ResNet((3, 4, 6, 3), (64, 128, 256, 512), **kwargs)


def resnet20(**kwargs) -> ResNet:
    return ResNet((3, 3, 3), (16, 32, 64), **kwargs)


NETWORKS = {"vgg16": vgg16, "resnet18": resnet18, "resnet20": resnet20, "resnet34": resnet34}


def build(name: str, act: str = "qcfs", levels: int = 4, **kwargs) -> nn.Module:
    """One of NETWORKS by name, e.g. build("resnet20", act="relu", num_classes=100)."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network '{name}' (expected one of {', '.join(NETWORKS)})")
    return NETWORKS[name](act=act, levels=levels, **kwargs)
