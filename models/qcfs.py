"""Torch models for snncc's examples: the QCFS activation and a small VGG for 28×28 inputs.

Invariant: in eval mode ``QCFS`` computes exactly
``x / θ → clamp(0, 1) → · T̃ → + 0.5 → floor → / T̃ → · θ`` with plain torch ops, so an ONNX
export contains the chain Div, Clip, Mul, Add, Floor, Div, Mul that snncc's ``match_activations``
recognises. This equals DESIGN.md's ``θ/T̃ · clip(floor((x·T̃ + θ/2) / θ), 0, T̃)``. In training
mode the floor has a straight-through gradient (the QCFS paper's GradFloor), and θ is learnt.
"""

from __future__ import annotations

import torch
from torch import nn


class _FloorSTE(torch.autograd.Function):
    """floor(x) forward, identity gradient backward."""

    @staticmethod
    def forward(ctx, x):
        return torch.floor(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class QCFS(nn.Module):
    """Quantisation-clip-floor-shift activation with a learnable scalar threshold θ and T̃ levels."""

    def __init__(self, levels: int = 4, theta: float = 8.0):
        super().__init__()
        if levels < 1:
            raise ValueError(f"levels must be >= 1, got {levels}")
        self.levels = int(levels)
        self.theta = nn.Parameter(torch.tensor([float(theta)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = float(self.levels)
        y = torch.clamp(x / self.theta, 0.0, 1.0) * levels + 0.5
        y = _FloorSTE.apply(y) if self.training else torch.floor(y)
        return y / levels * self.theta

    def extra_repr(self) -> str:
        return f"levels={self.levels}, theta={float(self.theta.detach()[0]):.4g}"


def make_activation(act: str, levels: int = 4, theta: float = 8.0) -> nn.Module:
    if act == "qcfs":
        return QCFS(levels, theta)
    if act == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation '{act}' (expected 'qcfs' or 'relu')")


# Channel plan: numbers are 3×3 conv (padding 1) + BatchNorm + activation; "M" is a 2×2 MaxPool.
# The MaxPool follows an activation, so every pooled channel carries one neuron's spike trains.
VGG_SMALL = (32, 32, "M", 64, 64, "M", 128, 128)


class VGG(nn.Module):
    """conv-BN-act blocks with MaxPools, global average pool, one Linear layer."""

    def __init__(
        self,
        act: str = "qcfs",
        levels: int = 4,
        theta: float = 8.0,
        cfg: tuple = VGG_SMALL,
        in_channels: int = 1,
        num_classes: int = 10,
    ):
        super().__init__()
        self.act, self.levels = act, levels
        layers: list[nn.Module] = []
        c = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers += [
                nn.Conv2d(c, item, 3, padding=1, bias=False),
                nn.BatchNorm2d(item),
                make_activation(act, levels, theta),
            ]
            c = item
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def build(act: str = "qcfs", levels: int = 4, theta: float = 8.0) -> VGG:
    return VGG(act=act, levels=levels, theta=theta)


def thresholds(model: nn.Module) -> list[float]:
    """The learnt θ of every QCFS layer, in order."""
    return [float(m.theta.detach()[0]) for m in model.modules() if isinstance(m, QCFS)]
