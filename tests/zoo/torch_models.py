"""Torch definitions of the zoo's classic topologies, scaled down to small widths and inputs.

The block structure is the published one (torchvision's ResNet-18/34/50 and VGG-16/19, MobileNet-V2's
inverted residuals with ReLU6 and depthwise convs, DenseNet's dense blocks and transitions,
SqueezeNet's fire modules); only channel widths and input sizes shrink so that a CPU test runs in
seconds. Weights are random; BatchNorm statistics are randomised as a trained model would have them.
"""

from __future__ import annotations

import io

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from tests.nets import randomize_batchnorm

INPUT_SHAPE = (3, 32, 32)


def conv_bn(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(*conv_bn(cin, width, 3, stride), nn.ReLU(inplace=True), *conv_bn(width, cout))
        self.shortcut = nn.Sequential(*conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.body(x) + self.shortcut(x))  # ReLU after the residual add


class Bottleneck(BasicBlock):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__(cin, width, stride)
        cout = width * self.expansion
        self.body = nn.Sequential(*conv_bn(cin, width, 1), nn.ReLU(inplace=True), *conv_bn(width, width, 3, stride),
                                  nn.ReLU(inplace=True), *conv_bn(width, cout, 1))


class ResNet(nn.Module):
    """torchvision's ResNet: 7x7/2 stem, 3x3/2 MaxPool after the ReLU, four stages, GAP + Linear."""

    def __init__(self, block, layers: list[int], base: int = 4, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, base, 7, 2, 3, bias=False), nn.BatchNorm2d(base), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        stages, cin = [], base
        for index, count in enumerate(layers):
            width = base * 2 ** index
            for i in range(count):
                stages.append(block(cin, width, 2 if i == 0 and index > 0 else 1))
                cin = width * block.expansion
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


VGG_CFGS = {
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG-16/19 (conv-BN-ReLU, MaxPool after the ReLU), Flatten head with two hidden ReLU layers."""

    def __init__(self, depth: int, divide: int = 16, classes: int = 10):
        super().__init__()
        layers, cin = [], 3
        for item in VGG_CFGS[depth]:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [*conv_bn(cin, item // divide), nn.ReLU(inplace=True)]
                cin = item // divide
        self.features = nn.Sequential(*layers)
        hidden = 4096 // (8 * divide)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(cin, hidden), nn.ReLU(True), nn.Dropout(),
                                        nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(), nn.Linear(hidden, classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """TensorFlow's 'SAME' padding, computed from the input's spatial size (a Pad from static shapes)."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [*conv_bn(cin, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [*conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True), *conv_bn(hidden, cout, 1)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)  # linear bottleneck: no activation after the add


class MobileNetV2(nn.Module):
    """MobileNet-V2's inverted residuals (ReLU6, depthwise 3x3, linear projections), TF 'SAME' stem."""

    SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, divide: int = 8, classes: int = 10):
        super().__init__()
        cin = 32 // divide
        self.stem = nn.Sequential(nn.Conv2d(3, cin, 3, 2, 0, bias=False), nn.BatchNorm2d(cin), nn.ReLU6(inplace=True))
        blocks = []
        for expand, channels, count, stride in self.SETTINGS:
            cout = max(channels // divide, 2)
            for i in range(count):
                blocks.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expand))
                cin = cout
        last = 1280 // divide
        self.blocks = nn.Sequential(*blocks, *conv_bn(cin, last, 1), nn.ReLU6(inplace=True))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, classes))

    def forward(self, x):
        x = self.blocks(self.stem(same_pad(x, 3, 2)))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, 4 * growth, 1, bias=False),
                                  nn.BatchNorm2d(4 * growth), nn.ReLU(inplace=True),
                                  nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


class DenseNet(nn.Module):
    """DenseNet-BC: pre-activation dense layers concatenated, transitions (BN-ReLU-conv-AvgPool)."""

    def __init__(self, blocks=(3, 3, 3), growth: int = 4, classes: int = 10):
        super().__init__()
        cin = 2 * growth
        layers = [nn.Conv2d(3, cin, 3, 1, 1, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        for index, count in enumerate(blocks):
            for _ in range(count):
                layers.append(DenseLayer(cin, growth))
                cin += growth
            if index != len(blocks) - 1:
                layers += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, cin // 2, 1, bias=False), nn.AvgPool2d(2)]
                cin //= 2
        layers += [nn.BatchNorm2d(cin), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int):
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU(inplace=True))
        self.expand1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU(inplace=True))
        self.expand3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU(inplace=True))

    def forward(self, x):
        x = self.squeeze(x)
        return torch.cat([self.expand1(x), self.expand3(x)], 1)  # branches with different thresholds


class SqueezeNet(nn.Module):
    """SqueezeNet 1.1: fire modules, ceil-mode MaxPools after a Concat, conv classifier + GAP."""

    def __init__(self, divide: int = 8, classes: int = 10):
        super().__init__()
        d = divide
        self.features = nn.Sequential(
            nn.Conv2d(3, 64 // d, 3, 2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(64 // d, 16 // d, 64 // d), Fire(128 // d, 16 // d, 64 // d), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(128 // d, 32 // d, 128 // d), Fire(256 // d, 32 // d, 128 // d), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(256 // d, 48 // d, 192 // d), Fire(384 // d, 48 // d, 192 // d),
            Fire(384 // d, 64 // d, 256 // d), Fire(512 // d, 64 // d, 256 // d))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(512 // d, classes, 1), nn.ReLU(inplace=True),
                                        nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.classifier(self.features(x))


class SEBlock(BasicBlock):
    """A squeeze-and-excitation residual block: the features times a Sigmoid gate computed from them.
    Not convertible: Sigmoid and the product of two spiking tensors sit between neurons."""

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__(cin, width, stride)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(width, max(width // 4, 1), 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(max(width // 4, 1), width, 1), nn.Sigmoid())

    def forward(self, x):
        y = self.body(x)
        return self.relu(y * self.gate(y) + self.shortcut(x))


class SpatialAttention(nn.Module):
    """Features pooled with Softmax weights over the positions (attention pooling) before an MLP head.
    Not convertible: the Softmax and the product feed the head's neurons."""

    def __init__(self, width: int = 8, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(*conv_bn(3, width, 3, 2), nn.ReLU(inplace=True), *conv_bn(width, width), nn.ReLU(inplace=True))
        self.score = nn.Conv2d(width, 1, 1)
        self.head = nn.Sequential(nn.Linear(width, 16), nn.ReLU(inplace=True), nn.Linear(16, classes))

    def forward(self, x):
        f = self.features(x)
        weights = torch.softmax(torch.flatten(self.score(f), 1), dim=1)
        pooled = (torch.flatten(f, 2) * weights.unsqueeze(1)).sum(2)
        return self.head(pooled)


class UNet(nn.Module):
    """A segmentation-style encoder-decoder: two downsampling stages, then nearest and bilinear
    upsampling (Resize) of ReLU outputs, each concatenated with the encoder's skip connection, and
    a per-pixel 1x1 classifier."""

    def __init__(self, width: int = 8, classes: int = 4):
        super().__init__()
        block = lambda cin, cout: nn.Sequential(*conv_bn(cin, cout), nn.ReLU(inplace=True))  # noqa: E731
        self.enc1, self.enc2, self.bottom = block(3, width), block(width, 2 * width), block(2 * width, 4 * width)
        self.dec2, self.dec1 = block(6 * width, 2 * width), block(3 * width, width)
        self.head = nn.Conv2d(width, classes, 1)

    def forward(self, x):
        skip1 = self.enc1(x)
        skip2 = self.enc2(F.max_pool2d(skip1, 2))
        y = self.bottom(F.max_pool2d(skip2, 2))
        y = self.dec2(torch.cat([F.interpolate(y, scale_factor=2.0, mode="nearest"), skip2], 1))
        y = self.dec1(torch.cat([F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False), skip1], 1))
        return self.head(y)


class QCFS(nn.Module):
    """QCFS as torch exporters see it: x/θ -> clamp(0, 1) -> ·T̃ -> +0.5 -> floor -> /T̃ -> ·θ."""

    def __init__(self, levels: int, theta: float):
        super().__init__()
        self.levels = levels
        self.theta = nn.Parameter(torch.tensor([theta]))

    def forward(self, x):
        return torch.floor(torch.clamp(x / self.theta, 0.0, 1.0) * float(self.levels) + 0.5) / float(self.levels) * self.theta


@torch.no_grad()
def to_qcfs(model: nn.Module, levels: int, x: torch.Tensor) -> nn.Module:
    """Replace every ReLU by QCFS with T̃ levels, θ at the 99th percentile of its input on x."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU):
                seen = []
                hook = child.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].clone()))
                model(x)
                hook.remove()
                setattr(parent, name, QCFS(levels, max(float(torch.quantile(seen[0].flatten(), 0.99)), 1e-3)))
    return model.eval()


BUILDERS = {
    "resnet18": lambda: ResNet(BasicBlock, [2, 2, 2, 2]),
    "resnet34": lambda: ResNet(BasicBlock, [3, 4, 6, 3]),
    "resnet50": lambda: ResNet(Bottleneck, [3, 4, 6, 3], base=2),
    "vgg16": lambda: VGG(16),
    "vgg19": lambda: VGG(19),
    "mobilenet_v2": lambda: MobileNetV2(),
    "densenet": lambda: DenseNet(),
    "squeezenet": lambda: SqueezeNet(),
    "unet": lambda: UNet(),
    "se_resnet": lambda: ResNet(SEBlock, [1, 1], base=8),
    "attention_cnn": lambda: SpatialAttention(),
}


def build(name: str, seed: int = 0) -> nn.Module:
    """A zoo model by name; "<name>_qcfs<T̃>" is the same net with QCFS activations at T̃ levels."""
    base, _, levels = name.partition("_qcfs")
    torch.manual_seed(seed)
    model = BUILDERS[base]()
    randomize_batchnorm(model, seed + 1)
    model.eval()
    if levels:
        inputs = torch.rand((64, *INPUT_SHAPE), generator=torch.Generator().manual_seed(seed + 2))
        to_qcfs(model, int(levels), inputs)
    return model


def export(model: nn.Module, dynamo: bool, opset: int, input_shape: tuple[int, ...] = INPUT_SHAPE,
           dynamic_batch: bool = True) -> onnx.ModelProto:
    """Either torch exporter at the given opset; the batch dimension dynamic, or fixed at 1 as
    torch exports a batch-1 example by default."""
    x = torch.rand(2 if dynamic_batch else 1, *input_shape)
    with torch.no_grad():
        if dynamo:
            dynamic_shapes = ({0: torch.export.Dim("N")},) if dynamic_batch else None
            program = torch.onnx.export(model, (x,), dynamo=True, input_names=["input"], output_names=["logits"],
                                        dynamic_shapes=dynamic_shapes, opset_version=opset, verbose=False)
            return program.model_proto
        buffer = io.BytesIO()
        dynamic_axes = {"input": {0: "N"}, "logits": {0: "N"}} if dynamic_batch else None
        torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["input"], output_names=["logits"],
                          dynamic_axes=dynamic_axes, opset_version=opset)
    return onnx.load_from_string(buffer.getvalue())
