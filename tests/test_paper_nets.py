"""models/paper_nets.py: the QCFS paper's VGG-16 and ResNet-18/20/34 export to ONNX (TorchScript
exporter, batch 1, 32×32) and compile at T = T̃ = 4 into SNNs whose logits equal the ANN's.
Random weights at reduced width keep it cheap; the layer structure is the paper's."""

from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from models import paper_nets
from models.qcfs import QCFS
from snncc.compiler import CompileOptions, compile_model
from tests import nets

WIDTH = {"vgg16": 1 / 16, "resnet18": 1 / 16, "resnet20": 1 / 4, "resnet34": 1 / 16}
EXPECTED_NEURONS = {"vgg16": 13 + 2, "resnet18": 1 + 2 * 8, "resnet20": 1 + 2 * 9, "resnet34": 1 + 2 * 16}


def export(model: nn.Module) -> onnx.ModelProto:
    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.rand(1, 3, 32, 32),), buffer, dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"])
    return onnx.load_from_string(buffer.getvalue())


@torch.no_grad()
def calibrate_thresholds(model: nn.Module, x: torch.Tensor) -> None:
    """θ of each QCFS near the 99th percentile of its input, so that every level occurs: one
    forward pass, each layer set from its input just before it runs."""
    def set_theta(layer, inputs):
        layer.theta.fill_(max(float(torch.quantile(inputs[0].flatten()[:100_000], 0.99)), 1e-3))

    hooks = [m.register_forward_pre_hook(set_theta) for m in model.modules() if isinstance(m, QCFS)]
    model(x)
    for hook in hooks:
        hook.remove()


@pytest.mark.parametrize("name", list(paper_nets.NETWORKS))
def test_paper_net_exports_and_compiles_losslessly(name):
    torch.manual_seed(0)
    model = paper_nets.build(name, act="qcfs", levels=4, width=WIDTH[name]).eval()
    nets.randomize_batchnorm(model)
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    calibrate_thresholds(model, x)
    ann = export(model)
    assert [d.dim_value for d in ann.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 32, 32]
    snn = compile_model(ann, CompileOptions(steps=4)).model
    assert sum(n.op_type == "ParallelSpike" for n in snn.graph.node) == EXPECTED_NEURONS[name]
    got = nets.run(snn, x.numpy())["logits"]
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_relu_variant_and_options():
    model = paper_nets.build("resnet20", act="relu", width=0.25, num_classes=100)
    assert not any(isinstance(m, QCFS) for m in model.modules())
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 100)
    vgg = paper_nets.vgg16(width=1 / 16, pool="max")
    assert sum(isinstance(m, nn.MaxPool2d) for m in vgg.modules()) == 5
    with pytest.raises(ValueError):
        paper_nets.build("resnet50")
