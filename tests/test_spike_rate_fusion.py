"""`snncc.spike_rate_fusion`: a folded neuron's rate Mul fused into its SpikeCount.

Reference: the unfused model run by ONNX Runtime with the native library; the fused one must give
the same outputs bit for bit, and a Mul that the fused kernel cannot express, or that ONNX Runtime
would fuse otherwise, must be left alone.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

from snncc import cpu_layout, ops
from snncc.ops import DOMAIN, TARGET_OPSET
from snncc.session import make_session, native_library_path
from snncc.spike_rate_fusion import fuse_spike_rates

if native_library_path() is None:
    pytest.skip("native library not built (run `make native`) or SNNCC_NATIVE=0", allow_module_level=True)

SHAPE = (2, 6, 5, 5)


def folded_layer(rate: np.ndarray, *, shape: tuple[int, ...] = SHAPE, rate_first: bool = False,
                 rate_is_input: bool = False, count_is_output: bool = False,
                 after: list[onnx.NodeProto] = ()) -> onnx.ModelProto:
    """M -> SpikeCount -> K -> Mul(K, rate) -> Y [-> `after` nodes], M of `shape`; per-channel θ_pre and ψ."""
    rng = np.random.default_rng(0)
    channels = shape[1]
    params = {"theta_pre": rng.uniform(0.5, 2.0, (channels, 1, 1)), "psi": rng.uniform(-0.2, 0.2, (channels, 1, 1))}
    mul_inputs = ["rate", "K"] if rate_first else ["K", "rate"]
    nodes = [oh.make_node(ops.SPIKE_COUNT, ["M", "theta_pre", "psi"], ["K"], domain=DOMAIN, T=4, name="count"),
             oh.make_node("Mul", mul_inputs, ["Y"], name="rate"), *after]
    inputs = [oh.make_tensor_value_info("M", onnx.TensorProto.FLOAT, list(shape))]
    if rate_is_input:
        inputs.append(oh.make_tensor_value_info("rate", onnx.TensorProto.FLOAT, list(rate.shape)))
    else:
        params["rate"] = rate
    outputs = [oh.make_tensor_value_info(after[-1].output[0] if after else "Y", onnx.TensorProto.FLOAT, None)]
    if count_is_output:
        outputs.append(oh.make_tensor_value_info("K", onnx.TensorProto.FLOAT, None))
    graph = oh.make_graph(nodes, "folded", inputs, outputs,
                          [onh.from_array(np.asarray(v, np.float32), k) for k, v in params.items()])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", TARGET_OPSET), oh.make_opsetid(DOMAIN, ops.VERSION)])


def shapes(shape: tuple[int, ...] = SHAPE) -> dict[str, tuple[int, ...]]:
    return {"M": shape, "K": shape}


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return make_session(model, native=True, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("rate_first", [False, True], ids=["Mul(K, rate)", "Mul(rate, K)"])
@pytest.mark.parametrize("rate_shape", [(6, 1, 1), (1,), ()], ids=str)
def test_fused_rate_gives_the_same_outputs(rate_shape, rate_first):
    rate = np.random.default_rng(1).uniform(0.1, 0.5, rate_shape).astype(np.float32)
    model = folded_layer(rate, rate_first=rate_first)
    fused = fuse_spike_rates(model, shapes())
    assert [n.op_type for n in fused.graph.node] == [ops.SPIKE_COUNT]
    assert list(fused.graph.node[0].input) == ["M", "theta_pre", "psi", "rate"] and fused.graph.node[0].output[0] == "Y"
    assert [n.op_type for n in model.graph.node] == [ops.SPIKE_COUNT, "Mul"]  # the input model is not changed
    assert cpu_layout.is_prepared(fused) and not cpu_layout.is_prepared(model)  # (snncc eval refuses fused models)
    m = np.random.default_rng(2).uniform(-1.0, 3.0, SHAPE).astype(np.float32)
    np.testing.assert_array_equal(run(fused, {"M": m})[0], run(model, {"M": m})[0])


@pytest.mark.parametrize("rate_shape", [(5, 1), (2, 1, 1, 1), (1, 6, 1, 1), (1, 1, 1, 1, 1)], ids=str)
def test_rate_that_is_not_a_channel_parameter_is_left_alone(rate_shape):
    # Along the width, along the batch, in another shape than the compiler's [C, 1, 1] (which the
    # padding to whole channel blocks relies on), or one that raises the rank.
    model = folded_layer(np.full(rate_shape, 0.25, np.float32))
    assert fuse_spike_rates(model, shapes()) is model


def test_rate_that_broadcasts_a_single_channel_is_left_alone():
    # A one-channel count times a six-channel rate: the Mul makes a bigger tensor than the count.
    shape = (2, 1, 5, 5)
    model = folded_layer(np.full((6, 1, 1), 0.25, np.float32), shape=shape)
    assert fuse_spike_rates(model, shapes(shape)) is model


def test_count_that_is_not_4d_is_left_alone():
    # NCHWc holds 4-D tensors only; a 2-D count's rate Mul is left to ONNX Runtime.
    model = folded_layer(np.full((6,), 0.25, np.float32), shape=(2, 6))
    assert fuse_spike_rates(model, shapes((2, 6))) is model


def test_rate_from_a_graph_input_is_left_alone():
    model = folded_layer(np.full((6, 1, 1), 0.25, np.float32), rate_is_input=True)
    assert fuse_spike_rates(model, shapes()) is model


def test_count_that_is_a_graph_output_is_left_alone():
    model = folded_layer(np.full((6, 1, 1), 0.25, np.float32), count_is_output=True)
    assert fuse_spike_rates(model, shapes()) is model


def test_count_with_a_second_reader_is_left_alone():
    model = folded_layer(np.full((6, 1, 1), 0.25, np.float32), after=[oh.make_node("Add", ["Y", "K"], ["Z"])])
    assert fuse_spike_rates(model, shapes()) is model


def test_rate_before_a_matmul_is_left_alone():
    # ONNX Runtime folds a scalar Mul into the MatMul after it (alpha), which rounds otherwise.
    weights = onh.from_array(np.full((5, 3), 0.5, np.float32), "w")
    model = folded_layer(np.full((1,), 0.25, np.float32), after=[oh.make_node("MatMul", ["Y", "w"], ["Z"])])
    model.graph.initializer.append(weights)
    assert fuse_spike_rates(model, shapes()) is model
