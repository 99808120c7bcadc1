"""`snncc.spike_rate_fusion`: a folded neuron's rate Mul fused into its SpikeCount.

Reference: the unfused model run by ONNX Runtime with the native library; the fused one must give
the same outputs bit for bit, and a Mul that the fused kernel cannot express must be left alone.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

from snncc import ops
from snncc.ops import DOMAIN, TARGET_OPSET
from snncc.session import make_session, native_library_path
from snncc.spike_rate_fusion import fuse_spike_rates

if native_library_path() is None:
    pytest.skip("native library not built (run `make native`) or SNNCC_NATIVE=0", allow_module_level=True)

SHAPE = (2, 6, 5, 5)
RANKS = {"M": 4, "K": 4}


def folded_layer(rate: np.ndarray, *, rate_is_input: bool = False, count_is_output: bool = False) -> onnx.ModelProto:
    """M -> SpikeCount -> Mul(count, rate) -> Y, M of SHAPE; per-channel θ_pre and ψ."""
    rng = np.random.default_rng(0)
    channels = SHAPE[1]
    params = {"theta_pre": rng.uniform(0.5, 2.0, (channels, 1, 1)), "psi": rng.uniform(-0.2, 0.2, (channels, 1, 1))}
    nodes = [oh.make_node(ops.SPIKE_COUNT, ["M", "theta_pre", "psi"], ["K"], domain=DOMAIN, T=4, name="count"),
             oh.make_node("Mul", ["K", "rate"], ["Y"], name="rate")]
    inputs = [oh.make_tensor_value_info("M", onnx.TensorProto.FLOAT, list(SHAPE))]
    if rate_is_input:
        inputs.append(oh.make_tensor_value_info("rate", onnx.TensorProto.FLOAT, list(rate.shape)))
    else:
        params["rate"] = rate
    outputs = [oh.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)]
    if count_is_output:
        outputs.append(oh.make_tensor_value_info("K", onnx.TensorProto.FLOAT, None))
    graph = oh.make_graph(nodes, "folded", inputs, outputs,
                          [onh.from_array(np.asarray(v, np.float32), k) for k, v in params.items()])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", TARGET_OPSET), oh.make_opsetid(DOMAIN, ops.VERSION)])


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return make_session(model, native=True, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("rate_shape", [(6, 1, 1), (1,), (), (1, 6, 1, 1)], ids=str)
def test_fused_rate_gives_the_same_outputs(rate_shape):
    rate = np.random.default_rng(1).uniform(0.1, 0.5, rate_shape).astype(np.float32)
    model = folded_layer(rate)
    fused = fuse_spike_rates(model, RANKS)
    assert [n.op_type for n in fused.graph.node] == [ops.SPIKE_COUNT]
    assert list(fused.graph.node[0].input) == ["M", "theta_pre", "psi", "rate"] and fused.graph.node[0].output[0] == "Y"
    assert [n.op_type for n in model.graph.node] == [ops.SPIKE_COUNT, "Mul"]  # the input model is not changed
    m = np.random.default_rng(2).uniform(-1.0, 3.0, SHAPE).astype(np.float32)
    np.testing.assert_array_equal(run(fused, {"M": m})[0], run(model, {"M": m})[0])


@pytest.mark.parametrize("rate_shape", [(5, 1), (2, 1, 1, 1), (1, 1, 1, 1, 1)], ids=str)
def test_rate_that_is_not_per_channel_is_left_alone(rate_shape):
    # Along the width, along the batch, or one that raises the rank: no per-channel parameter.
    model = folded_layer(np.full(rate_shape, 0.25, np.float32))
    assert fuse_spike_rates(model, RANKS) is model


def test_rate_from_a_graph_input_is_left_alone():
    model = folded_layer(np.full((6, 1, 1), 0.25, np.float32), rate_is_input=True)
    assert fuse_spike_rates(model, RANKS) is model


def test_count_that_is_a_graph_output_is_left_alone():
    model = folded_layer(np.full((6, 1, 1), 0.25, np.float32), count_is_output=True)
    assert fuse_spike_rates(model, RANKS) is model
