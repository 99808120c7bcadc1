"""Issue #18: the graph patterns of real exports, one test per pattern, from real torch exports.

Each small torch module below reproduces one pattern as published code writes it (re-implemented
here, not imported: efficientnet_pytorch's static "same" padding, timm's Conv2dSame, Keras'
ZeroPadding2D + MaxPooling2D as tf2onnx emits it, decoder upsampling, adaptive average pooling,
batch-1 exports). Each export is first checked to hold the pattern's ops, then compiled with
thresholds from random calibration data at two T; the SNN must equal the quantised ANN neuron by
neuron (tests/equivalence.py), the folded SNN must give the same outputs, and the analysed ANN
must compute what the export computes. Exports are cached in .cache/patterns, keyed by this file's
module code and the torch version.
"""

from __future__ import annotations

import hashlib
import io
import math
from pathlib import Path

import numpy as np
import onnx
import pytest

from snncc.calibration.dataset import CalibrationData
from snncc.compiler import CompileOptions, compile_model
from snncc.errors import ConversionError, SnnccError
from snncc.inspection import describe
from tests import equivalence
from tests.cached_models import cached_model

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "patterns"
INPUT = (3, 8, 8)
STEPS = (4, 7)


class StaticSamePadding(nn.Module):
    """efficientnet_pytorch's Conv2dStaticSamePadding: ZeroPad2d sized at construction, then a valid
    conv. The TorchScript exporter writes the pads as Constant -> ConstantOfShape -> Concat ->
    Reshape -> Slice -> Transpose -> Reshape -> Cast."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, 1, 1)
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.conv = nn.Conv2d(4, 4, 3, 2)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.relu(self.conv(self.pad(x)))
        return self.head(x.mean((2, 3)))


def _same_padding(x, kernel: int, stride: int):
    """timm's pad_same: TF "same" padding computed from the input's H and W at run time."""
    height, width = x.size()[-2:]

    def amount(size):
        return max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)

    ph, pw = amount(height), amount(width)
    return F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])


class DynamicSamePadding(nn.Module):
    """timm's Conv2dSame (tf_efficientnet_lite0) with ReLU6, exported by TorchScript."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, 1, 1)
        self.conv = nn.Conv2d(4, 4, 3, 2)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = F.relu6(self.stem(x))
        x = F.relu6(self.conv(_same_padding(x, 3, 2)))
        return self.head(x.mean((2, 3)))


class ZeroPadMaxPool(nn.Module):
    """Relu -> zero Pad -> MaxPool (Keras ZeroPadding2D + MaxPooling2D, ResNet50's stem)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, 1, 1)
        self.conv = nn.Conv2d(4, 4, 3, 1, 1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = F.max_pool2d(F.pad(x, [1, 1, 1, 1]), 3, 2)
        return self.head(F.relu(self.conv(x)).mean((2, 3)))


class Upsample(nn.Module):
    """Relu -> F.interpolate -> Conv, as in FPN/U-Net decoders."""

    def __init__(self, mode: str):
        super().__init__()
        self.mode = mode
        self.stem = nn.Conv2d(3, 4, 3, 2, 1)
        self.conv = nn.Conv2d(4, 4, 3, 1, 1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = F.relu(self.stem(x))
        corners = {} if self.mode == "nearest" else {"align_corners": False}
        x = F.interpolate(x, scale_factor=2, mode=self.mode, **corners)
        return self.head(F.relu(self.conv(x)).mean((2, 3)))


class AdaptivePoolHead(nn.Module):
    """adaptive_avg_pool2d to 3x3 from 8x8 (not a divisor: the dynamo exporter writes Transpose of
    axis 0, GatherND, Where with constant masks and Gathers), then a Linear head with a ReLU."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, 1, 1)
        self.fc = nn.Linear(4 * 3 * 3, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(F.relu(self.stem(x)), (3, 3))
        return self.head(F.relu(self.fc(torch.flatten(x, 1))))


class ShuffleAndFlatten(nn.Module):
    """ShuffleNet's channel shuffle (view(b, g, c/g, h, w)), an upsampling to a given size and a
    view(b, -1) flatten: with a batch-1 example and no dynamic axes the exporters hard-code the
    batch 1 in the Reshape targets and the Resize sizes."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, 1, 1)
        self.conv = nn.Conv2d(4, 8, 3, 1, 1)
        self.fc = nn.Linear(4 * 8 * 8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.stem(x))
        b, c, h, w = x.shape
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        x = F.interpolate(F.avg_pool2d(x, 2), size=(h, w), mode="nearest")  # Resize to sizes [1, 4, 8, 8]
        x = F.relu(self.conv(x))[:, :4]
        return self.head(F.relu(self.fc(x.reshape(x.size(0), -1))))


class SiluNet(nn.Module):
    """EfficientNet-B0's activation only: nothing to convert."""

    def __init__(self):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, 4, 3, 1, 1), nn.Conv2d(4, 4, 3, 1, 1)])
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        for conv in self.convs:
            x = F.silu(conv(x))
        return self.head(x.mean((2, 3)))


class SqueezeExcite(nn.Module):
    """A Sigmoid gate multiplied into the features (SE blocks): not exact, refused."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, 1, 1)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 4, 1), nn.Sigmoid())
        self.conv = nn.Conv2d(4, 4, 3, 1, 1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = F.relu(self.stem(x))
        return self.head(F.relu(self.conv(x * self.gate(x))).mean((2, 3)))


class LocalResponseNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, 1, 1)
        self.lrn = nn.LocalResponseNorm(3)
        self.conv = nn.Conv2d(4, 4, 3, 1, 1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = self.lrn(F.relu(self.stem(x)))
        return self.head(F.relu(self.conv(x)).mean((2, 3)))


class SpikeProduct(nn.Module):
    """The product of two activations: not linear in the spikes, refused."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, 1, 1), nn.Conv2d(3, 4, 3, 1, 1)
        self.conv = nn.Conv2d(4, 4, 3, 1, 1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = F.relu(self.a(x)) * F.relu(self.b(x))
        return self.head(F.relu(self.conv(x)).mean((2, 3)))


MODULES = {"static_same": StaticSamePadding, "dynamic_same": DynamicSamePadding, "zero_pad_max_pool": ZeroPadMaxPool,
           "nearest": lambda: Upsample("nearest"), "bilinear": lambda: Upsample("bilinear"),
           "adaptive_pool": AdaptivePoolHead, "shuffle_flatten": ShuffleAndFlatten, "silu": SiluNet,
           "squeeze_excite": SqueezeExcite, "lrn": LocalResponseNorm, "spike_product": SpikeProduct}


def _export(name: str, exporter: str, opset: int, dynamic_batch: bool = True, dynamic_hw: bool = False) -> onnx.ModelProto:
    torch.manual_seed(0)
    module = MODULES[name]().eval()
    x = torch.rand(2 if dynamic_batch else 1, *INPUT)
    with torch.no_grad():
        if exporter == "dynamo":
            shapes = {"dynamic_shapes": ({0: torch.export.Dim("N")},)} if dynamic_batch else {}
            return torch.onnx.export(module, (x,), dynamo=True, input_names=["input"], output_names=["logits"],
                                     opset_version=opset, verbose=False, **shapes).model_proto
        buffer = io.BytesIO()
        spatial = {2: "H", 3: "W"} if dynamic_hw else {}
        axes = {"dynamic_axes": {"input": {0: "N", **spatial}, "logits": {0: "N"}}} if dynamic_batch else {}
        torch.onnx.export(module, (x,), buffer, dynamo=False, input_names=["input"], output_names=["logits"],
                          opset_version=opset, **axes)
    return onnx.load_from_string(buffer.getvalue())


def export(name: str, exporter: str, opset: int, dynamic_batch: bool = True, dynamic_hw: bool = False) -> onnx.ModelProto:
    """The export, cached under a hash of the module and export code above and the torch version."""
    source = Path(__file__).read_text().split("\ndef export(")[0].encode()
    key = hashlib.sha256(source + f"|{torch.__version__}|{name}|{exporter}|{opset}|{dynamic_batch}|{dynamic_hw}".encode()).hexdigest()[:16]
    path = CACHE / f"{name}-{exporter}-{opset}-{'N' if dynamic_batch else '1'}{'HW' if dynamic_hw else ''}-{key}.onnx"
    return cached_model(path, lambda: _export(name, exporter, opset, dynamic_batch, dynamic_hw))


def _inputs(model: onnx.ModelProto, n: int, seed: int) -> np.ndarray:
    shape = [d if isinstance(d, int) else size for d, size in zip(equivalence.input_shape(model)[1:], INPUT)]
    return np.random.default_rng(seed).uniform(0, 1, size=(n, *shape)).astype(np.float32)


def _options(ann: onnx.ModelProto, steps: int, **extra) -> CompileOptions:
    return CompileOptions(steps=steps, source="pattern.onnx",
                          calibration_data=CalibrationData(_inputs(ann, 8, seed=1), "random"), **extra)


def assert_converts_exactly(ann: onnx.ModelProto) -> None:
    """At each T: SNN == quantised ANN neuron by neuron, folded SNN == SNN, analysed ANN == export."""
    x = _inputs(ann, 16, seed=2)
    original = equivalence.run_per_sample(ann, x)
    analysed = equivalence.run(equivalence.original_ann(ann), x)
    equivalence.assert_outputs_close(original, analysed, list(original), share=1.0)
    for steps in STEPS:
        snn = compile_model(ann, _options(ann, steps)).model
        stats = equivalence.assert_snn_equals_reference(snn, equivalence.derived_reference(ann, snn, steps), steps, x)
        assert stats.layers >= 2
        folded = compile_model(ann, _options(ann, steps, fold_time=True)).model
        outputs = [o.name for o in snn.graph.output]
        equivalence.assert_outputs_close(equivalence.run(snn, x), equivalence.run(folded, x), outputs)


def _op_types(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


def test_pads_from_constant_of_shape_chain():
    ann = export("static_same", "torchscript", 13)
    assert {"ConstantOfShape", "Pad"} <= _op_types(ann)
    assert_converts_exactly(ann)


@pytest.mark.parametrize("dynamic_hw", [False, True], ids=["static_hw", "dynamic_hw"])
def test_same_padding_computed_from_the_input_shape(dynamic_hw):
    """With static H and W the pads fold to constants; with dynamic ones they stay a computation on
    Shape that reads H and W only, which are the same in the SNN."""
    ann = export("dynamic_same", "torchscript", 17, dynamic_hw=dynamic_hw)
    assert {"Shape", "Pad"} <= _op_types(ann)
    assert_converts_exactly(ann)


def test_zero_pad_between_relu_and_maxpool():
    ann = export("zero_pad_max_pool", "torchscript", 13)
    assert {"Pad", "MaxPool"} <= _op_types(ann)
    assert_converts_exactly(ann)


def _tf2onnx_zero_pad_max_pool() -> onnx.ModelProto:
    """Hand-built (tensorflow is not installed here) as tf2onnx writes Keras' ZeroPadding2D +
    MaxPooling2D: NHWC input, Transposes around the NCHW Conv and MaxPool, the Pad in NHWC."""
    h = onnx.helper
    rng = np.random.default_rng(5)
    weights = {"w1": rng.normal(size=(4, 3, 3, 3)) * 0.5, "b1": rng.normal(size=4) * 0.1,
               "w2": rng.normal(size=(4, 4, 3, 3)) * 0.3, "b2": rng.normal(size=4) * 0.1,
               "wd": rng.normal(size=(4, 3)), "bd": rng.normal(size=3) * 0.1}
    inits = [onnx.numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    inits.append(onnx.numpy_helper.from_array(np.array([0, 1, 1, 0, 0, 1, 1, 0], np.int64), "pads"))
    nodes = [
        h.make_node("Transpose", ["input"], ["x_nchw"], perm=[0, 3, 1, 2]),
        h.make_node("Conv", ["x_nchw", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c1"], ["r1"]),
        h.make_node("Transpose", ["r1"], ["r1_nhwc"], perm=[0, 2, 3, 1]),
        h.make_node("Pad", ["r1_nhwc", "pads"], ["padded"]),
        h.make_node("Transpose", ["padded"], ["padded_nchw"], perm=[0, 3, 1, 2]),
        h.make_node("MaxPool", ["padded_nchw"], ["pooled"], kernel_shape=[3, 3], strides=[2, 2]),
        h.make_node("Conv", ["pooled", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c2"], ["r2"]),
        h.make_node("Transpose", ["r2"], ["r2_nhwc"], perm=[0, 2, 3, 1]),
        h.make_node("ReduceMean", ["r2_nhwc"], ["gap"], axes=[1, 2], keepdims=0),
        h.make_node("MatMul", ["gap", "wd"], ["dense"]),
        h.make_node("Add", ["dense", "bd"], ["logits"]),
    ]
    for node in nodes:
        node.name = node.output[0]
    graph = h.make_graph(nodes, "keras_zero_pad_max_pool", [h.make_tensor_value_info("input", 1, ["N", 8, 8, 3])],
                         [h.make_tensor_value_info("logits", 1, ["N", 3])], inits)
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 13)])


def test_zero_pad_max_pool_as_tf2onnx_writes_it():
    assert_converts_exactly(_tf2onnx_zero_pad_max_pool())


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("exporter,opset", [("torchscript", 13), ("dynamo", 18)])
def test_resize_between_neurons(mode, exporter, opset):
    ann = export(mode, exporter, opset)
    assert "Resize" in _op_types(ann)
    assert_converts_exactly(ann)


def test_adaptive_average_pool_from_the_dynamo_exporter():
    ann = export("adaptive_pool", "dynamo", 18)
    assert {"Transpose", "GatherND", "Where", "Gather"} <= _op_types(ann)
    assert_converts_exactly(ann)


@pytest.mark.parametrize("exporter,opset", [("torchscript", 17), ("dynamo", 18)])
def test_static_batch_1_export_becomes_batch_dynamic(exporter, opset):
    ann = export("shuffle_flatten", exporter, opset, dynamic_batch=False)
    assert equivalence.input_shape(ann)[0] == 1
    targets = [onnx.numpy_helper.to_array(t) for t in ann.graph.initializer if t.data_type == onnx.TensorProto.INT64]
    constants = [onnx.numpy_helper.to_array(a.t) for n in ann.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    assert any(t.ndim == 1 and t.size >= 2 and t[0] == 1 for t in targets + constants), "no Reshape target hard-codes the batch 1"
    assert_converts_exactly(ann)


@pytest.mark.parametrize("exporter,opset", [("torchscript", 17), ("dynamo", 18)])
def test_silu_only_model_names_what_it_found(exporter, opset):
    ann = export("silu", exporter, opset)
    with pytest.raises(SnnccError, match=r"2 SiLU activations: snncc converts ReLU-family activations only"):
        compile_model(ann, _options(ann, 4))
    assert "not convertible: 2 SiLU activations" in describe(ann, "silu.onnx")


# torch exports LocalResponseNorm decomposed: x·x (a product of trains), average pooling, Pow, Div.
@pytest.mark.parametrize("name,ops", [("squeeze_excite", {"Sigmoid", "Mul"}), ("lrn", {"Mul", "Pow"}),
                                      ("spike_product", {"Mul"})])
def test_inexact_ops_between_neurons_stay_refused(name, ops):
    ann = export(name, "torchscript", 17)
    with pytest.raises(ConversionError) as error:
        compile_model(ann, _options(ann, 4))
    found = {p.op for p in error.value.problems}
    assert ops <= found if name == "lrn" else ops == found, error.value.problems
    assert all(p.reason for p in error.value.problems)
