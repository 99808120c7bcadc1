"""Small QCFS networks for the end-to-end tests, and helpers to export and probe them.

The networks cover the topologies the compiler must handle: VGG-style with MaxPool after the
activation, MaxPool before the activation, ResNet-style identity and projection shortcuts,
Concat of branches with different thresholds, BatchNorm after an activation (Keras style),
and Gemm heads after Flatten and after global average pooling.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import torch
from torch import nn

from models.qcfs import QCFS, VGG

INPUT_SHAPE = (1, 12, 12)


def conv_bn(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout)]


class ResidualBlock(nn.Module):
    """conv-BN-QCFS-conv-BN (+ shortcut) - QCFS; projection shortcut when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, levels: int):
        super().__init__()
        self.body = nn.Sequential(*conv_bn(cin, cout, stride), QCFS(levels), *conv_bn(cout, cout))
        self.shortcut = nn.Sequential(*conv_bn(cin, cout, stride, kernel=1)) if stride != 1 or cin != cout else nn.Identity()
        self.act = QCFS(levels)

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


class ResNetTiny(nn.Module):
    def __init__(self, levels: int):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(1, 8), QCFS(levels))
        self.blocks = nn.Sequential(ResidualBlock(8, 8, 1, levels), ResidualBlock(8, 16, 2, levels))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class ConcatNet(nn.Module):
    """Two branches with different thresholds, concatenated; BN after an activation; Flatten head."""

    def __init__(self, levels: int):
        super().__init__()
        self.a = nn.Sequential(*conv_bn(1, 4), QCFS(levels))
        self.b = nn.Sequential(*conv_bn(1, 6, kernel=5), QCFS(levels))
        self.post_bn = nn.BatchNorm2d(10)
        self.mix = nn.Sequential(nn.Conv2d(10, 8, 3, stride=2, padding=1), QCFS(levels), nn.MaxPool2d(2))
        self.head = nn.Linear(8 * 3 * 3, 10)

    def forward(self, x):
        x = torch.cat([self.a(x), self.b(x)], dim=1)
        x = self.mix(self.post_bn(x))
        return self.head(torch.flatten(x, 1))


class PoolFirstNet(nn.Module):
    """MaxPool between a conv and its activation: the compiler must move it after the neuron."""

    def __init__(self, levels: int):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.MaxPool2d(2), QCFS(levels),
                                      nn.Conv2d(6, 8, 3, padding=1), QCFS(levels))
        self.head = nn.Linear(8 * 6 * 6, 10)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


def build(name: str, levels: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = {
        "vgg": lambda: VGG(levels=levels, cfg=(8, "M", 16, 16, "M", 16)),
        "resnet": lambda: ResNetTiny(levels),
        "concat": lambda: ConcatNet(levels),
        "poolfirst": lambda: PoolFirstNet(levels),
    }[name]()
    randomize_batchnorm(model)
    model.eval()
    set_thresholds(model, sample_inputs(256, seed=seed + 1))
    return model


def randomize_batchnorm(model: nn.Module, seed: int = 1234) -> None:
    """Non-trivial running statistics and affine parameters, as a trained model would have."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.3)


@torch.no_grad()
def set_thresholds(model: nn.Module, x: torch.Tensor) -> None:
    """Give every QCFS a θ near the 99th percentile of its input, layer by layer, so that all levels occur."""
    for layer in [m for m in model.modules() if isinstance(m, QCFS)]:
        seen = []
        hook = layer.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0]))
        model(x)
        hook.remove()
        layer.theta.fill_(max(float(torch.quantile(seen[0].flatten(), 0.99)), 1e-3))


def set_levels(model: nn.Module, levels: int) -> None:
    for m in model.modules():
        if isinstance(m, QCFS):
            m.levels = levels


def sample_inputs(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *INPUT_SHAPE), generator=g)


def export(model: nn.Module, dynamo: bool, opset: int = 17) -> onnx.ModelProto:
    """Export with either torch exporter, batch dimension dynamic."""
    x = sample_inputs(2)
    buffer = io.BytesIO()
    if dynamo:
        program = torch.onnx.export(model, (x,), dynamo=True, input_names=["input"], output_names=["logits"],
                                    dynamic_shapes=({0: torch.export.Dim("N")},), opset_version=max(opset, 18),
                                    verbose=False)
        return program.model_proto
    torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=opset)
    return onnx.load_from_string(buffer.getvalue())


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs the named intermediate values (type float32, shape free)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return probe


def run(model: onnx.ModelProto, x: np.ndarray, names: list[str] | None = None) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    names = names or []
    session = ort.InferenceSession(with_outputs(model, names).SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    return dict(zip(outputs, session.run(None, {session.get_inputs()[0].name: x})))
