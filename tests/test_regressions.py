"""Minimal graphs for bugs that the zoo and the property tests found, one test each.

Each test names the model or property example it was shrunk from.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from snncc.calibration.dataset import CalibrationData
from snncc.compiler import CompileOptions, compile_model
from snncc.errors import ConversionError
from tests import equivalence, graphs, random_cnn, test_properties

STEPS = 4


def _compile_and_compare(ann: onnx.ModelProto, x: np.ndarray, steps: int = STEPS) -> onnx.ModelProto:
    snn = compile_model(ann, CompileOptions(steps=steps, calibration_data=CalibrationData(x, "random"))).model
    equivalence.assert_snn_equals_reference(snn, equivalence.derived_reference(ann, snn, steps), steps, x)
    return snn


def test_ir3_model_with_initializers_as_inputs_compiles():
    """light_squeezenet (IR 3, opset 9): weights are also graph inputs. The output must not keep IR 3,
    where the checker requires every initializer to be a graph input."""
    w = onnx.numpy_helper.from_array(np.random.default_rng(0).normal(size=(4, 2, 1, 1)).astype(np.float32), "w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["x", "w"], ["c"]), onnx.helper.make_node("Relu", ["c"], ["r"]),
         onnx.helper.make_node("GlobalAveragePool", ["r"], ["y"])],
        "ir3", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2, 3, 3]),
                onnx.helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [4, 2, 1, 1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 1, 1])], [w])
    ann = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 9)])
    ann.ir_version = 3
    x = np.random.default_rng(1).normal(size=(8, 2, 3, 3)).astype(np.float32)
    snn = _compile_and_compare(ann, x)
    assert snn.ir_version >= 10


# `h.view(h.size(0), -1)` as the TorchScript exporter writes it with a dynamic batch.
_SHAPE_HEAD = """g (float[N,2,3,3] x) => (float[N,3] y)
    <float[4,2,1,1] w = {0.5,-0.2,0.3,0.8,-0.6,0.4,0.9,0.1}, float[5,36] w1 = {%s}, float[3,5] w2 = {%s},
     int64[1] zero = {0}, int64[1] minus_one = {-1}> {
    c = Conv (x, w)
    r = Relu (c)
    shape = Shape (r)
    batch = Gather <axis: int = 0> (shape, zero)
    target = Concat <axis: int = 0> (batch, minus_one)
    flat = Reshape (%s, target)
    h = Gemm <transB: int = 1> (flat, w1)
    a = Relu (h)
    y = Gemm <transB: int = 1> (a, w2)
}"""


def _shape_head(reshaped: str) -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    w1 = ",".join(f"{v:.3f}" for v in rng.normal(size=5 * 36) * 0.3)
    w2 = ",".join(f"{v:.3f}" for v in rng.normal(size=3 * 5))
    return graphs.model(_SHAPE_HEAD % (w1, w2, reshaped))


def test_flatten_head_reading_the_dynamic_batch_converts():
    """tests/zoo: a torch `view(x.size(0), -1)` head reads the batch through Shape between neurons;
    in the spiking graph that batch is T·B, which is what reshaping the spike trains needs."""
    x = np.random.default_rng(3).normal(size=(16, 2, 3, 3)).astype(np.float32)
    _compile_and_compare(_shape_head("r"), x)


def test_batch_from_spiking_shape_used_on_analog_tensor_is_refused():
    """The same Shape used to reshape the analog input would see T·B rows of a B-row tensor."""
    text = _SHAPE_HEAD.replace("h = Gemm <transB: int = 1> (flat, w1)",
                               "flat_in = Reshape (x, target)\n    h0 = Gemm <transB: int = 1> (flat, w1)\n"
                               "    h1 = ReduceSum <keepdims: int = 1> (flat_in, minus_one)\n    h = Add (h0, h1)")
    ann = graphs.model(text % (",".join(["0.1"] * 180), ",".join(["0.2"] * 15), "r"))
    x = np.random.default_rng(3).normal(size=(16, 2, 3, 3)).astype(np.float32)
    with pytest.raises(ConversionError) as error:
        compile_model(ann, CompileOptions(steps=STEPS, calibration_data=CalibrationData(x, "random")))
    assert [(p.node, p.op) for p in error.value.problems] == [("flat_in", "Reshape")]
    assert "T·B" in error.value.problems[0].reason


def test_maxpool_after_a_non_exact_op_names_its_producer():
    """light_bvlc_alexnet: MaxPool after LRN. The reason named a residual Add that is not there."""
    text = """g (float[N,2,4,4] x) => (float[N,2,2,2] y) <float[2,2,1,1] w = {1.0,0.5,-0.5,1.0}> {
        c = Conv (x, w)
        r = Relu (c)
        n = LRN <size: int = 3> (r)
        p = MaxPool <kernel_shape: ints = [2, 2], strides: ints = [2, 2]> (n)
        c2 = Conv (p, w)
        y = Relu (c2)
    }"""
    proto = graphs.model(text)
    for node in proto.graph.node:
        node.name = node.output[0]
    x = np.random.default_rng(4).normal(size=(8, 2, 4, 4)).astype(np.float32)
    with pytest.raises(ConversionError) as error:
        compile_model(proto, CompileOptions(steps=STEPS, calibration_data=CalibrationData(x, "random")))
    problems = {p.node: p for p in error.value.problems}
    assert sorted(problems) == ["n", "p"]
    assert "'n' (LRN)" in problems["p"].reason and "Add" not in problems["p"].reason.split(";")[0].split(":")[0]


def test_unnamed_nodes_get_distinct_names_for_errors_and_sources():
    """tests/graphs-style models have no node names: two ReLUs were both recorded as source 'Relu',
    and errors named nodes the user cannot find ('node_1')."""
    snn = _compile_and_compare(_shape_head("r"), np.random.default_rng(3).normal(size=(16, 2, 3, 3)).astype(np.float32))
    sources = sorted(equivalence.neuron_parameters(snn))
    assert sources == ["a", "r"]


def test_two_activations_of_one_tensor_calibrate():
    """tests/test_bad_input (several outputs): ReLU and ReLU6 of the same tensor made DA-QCFS
    calibration build two reference inputs of one name ('ref::c', 'ref::c_1') and crash."""
    text = """g (float[N,2,4,4] x) => (float[N,2,4,4] y) <float[2,2,1,1] w = {1.0,0.5,-0.5,1.0}> {
        c = Conv (x, w)
        r = Relu (c)
        r6 = Clip <min: float = 0.0, max: float = 6.0> (c)
        s = Add (r, r6)
        c2 = Conv (s, w)
        y = Relu (c2)
    }"""
    x = np.random.default_rng(5).normal(size=(16, 2, 4, 4)).astype(np.float32) * 4
    snn = _compile_and_compare(graphs.model(text, opset=9), x)
    assert sorted(equivalence.neuron_parameters(snn)) == ["r", "r6", "y"]


def test_activation_reading_an_activation_calibrates():
    """tests/test_properties (shrunk): conv -> ReLU -> MaxPool -> ReLU. After the MaxPool moves, the
    second ReLU reads the first one's output, whose reference value z of one node is the r of the
    other: calibration made two inputs 'ref::relu4' and crashed on 'ref::relu4_1'."""
    spec = random_cnn.NetSpec(in_channels=1, size=3, classes=2, seed=0, blocks=(
        random_cnn.Block(kind="conv", channels=1, kernel=1), random_cnn.Block(kind="pool_first", kernel=1)))
    test_properties.check_spec(spec, steps=1, calibrate=None, with_data=False)


def test_activation_of_the_graph_input_calibrates():
    """tests/test_properties (shrunk): MaxPool -> ReLU on the input; after the move the ReLU reads the
    graph input, for which calibration asked a reference value 'ref::x' that no node produces."""
    spec = random_cnn.NetSpec(in_channels=1, size=3, classes=2, seed=0, blocks=(random_cnn.Block(kind="pool_first", kernel=1),))
    test_properties.check_spec(spec, steps=1, calibrate=None, with_data=False)
