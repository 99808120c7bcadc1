"""set_qcfs_parameters and expand_time on small inline graphs, against numpy."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from snncc import ops
from snncc.passes._activation import NeuronParameters, get_parameters, is_activation, set_parameters
from snncc.passes.expand_time import ExpandTimePass
from snncc.passes.match_activations import MatchActivationsPass
from snncc.passes.set_qcfs_parameters import SetQcfsParametersPass
from tests import graphs
from tests.test_passes import _qcfs_text


def _with_functions(model: ir.Model) -> onnx.ModelProto:
    model.opset_imports.pop("snncc.internal", None)
    proto = ir.to_proto(model)
    proto.functions.extend(ops.function_library())
    return proto


@pytest.mark.parametrize("steps,case", [(4, "qcfs-lossless"), (3, "qcfs-T-differs")])
def test_qcfs_parameters_follow_table_2(steps, case):
    model = graphs.ir_model(_qcfs_text(theta="2.5"))
    MatchActivationsPass()(model)
    SetQcfsParametersPass(steps)(model)
    params = get_parameters(next(n for n in model.graph if is_activation(n)))
    assert params.case == case
    assert np.allclose(params.theta_pre, 2.5) and np.allclose(params.theta_post, 2.5) and np.allclose(params.psi, 0)


def test_levels_override_changes_the_case():
    model = graphs.ir_model(_qcfs_text())
    MatchActivationsPass()(model)
    SetQcfsParametersPass(8, levels=8)(model)
    assert get_parameters(next(n for n in model.graph if is_activation(n))).case == "qcfs-lossless"


def _two_layer(tail: str | None = None) -> ir.Model:
    """Relu -> 1x1 Conv -> Relu; `tail` reads r2, else r2 is the graph output itself."""
    last, tail = ("r2", tail) if tail else ("y", "")
    text = f"""g (float[N,2,4,4] x) => (float[N,2,4,4] y) <float[2,2,1,1] w = {{1.0, 0.5, -0.5, 1.0}}> {{
        r1 = Relu (x)
        c = Conv (r1, w)
        {last} = Relu (c)
        {tail}
    }}"""
    model = graphs.ir_model(text)
    ir.passes.common.ShapeInferencePass()(model)
    MatchActivationsPass()(model)
    rng = np.random.default_rng(0)
    for node in model.graph:
        if is_activation(node):
            theta = rng.uniform(0.5, 1.5, 2).astype(np.float32)
            set_parameters(node, NeuronParameters(theta, theta * 1.1, rng.uniform(-0.05, 0.05, 2).astype(np.float32), "test"))
    return model


def _da_qcfs(x, params: NeuronParameters, steps):
    shape = (1, -1, 1, 1)
    pre, post, psi = (getattr(params, k).reshape(shape) for k in ("theta_pre", "theta_post", "psi"))
    return post / steps * np.clip(np.floor(((x + psi) * steps + pre / 2) / pre), 0, steps)


def test_expansion_equals_da_qcfs_network_and_keeps_batch():
    steps = 5
    model = _two_layer()
    params = [get_parameters(n) for n in model.graph if is_activation(n)]
    ExpandTimePass(steps)(model)
    kinds = graphs.op_types(model)
    assert kinds.count(ops.PARALLEL_SPIKE) == 2 and "Activation" not in kinds
    # The analog input enters the first neuron once, as its mean current: no Tile.
    assert "Tile" not in kinds
    neurons = [n for n in model.graph if n.op_type == ops.PARALLEL_SPIKE]
    assert [n.attributes.get_int("constant_input") for n in neurons] == [1, 0]  # both written out
    assert kinds[-1] == "ReduceMean"  # the spiking graph output is read out as the T-mean
    x = np.random.default_rng(1).normal(0.5, 1, size=(3, 2, 4, 4)).astype(np.float32)
    (y,) = graphs.run(_with_functions(model), x=x)
    w = np.array([[1.0, 0.5], [-0.5, 1.0]], np.float32)
    hidden = _da_qcfs(x, params[0], steps)
    expected = _da_qcfs(np.einsum("oc,bchw->bohw", w, hidden), params[1], steps)
    assert y.shape == x.shape
    assert np.allclose(y, expected, atol=1e-5)


def test_serial_if_tiles_the_analog_input():
    """The serial IF neuron integrates step by step: its analog input is repeated T times."""
    model = _two_layer()
    ExpandTimePass(5, neuron="if")(model)
    kinds = graphs.op_types(model)
    assert kinds.count(ops.SERIAL_IF) == 2
    assert kinds.index("Tile") < kinds.index(ops.SERIAL_IF)


def test_readout_runs_on_the_time_mean():
    model = _two_layer("y = Sigmoid (r2)")
    ExpandTimePass(3)(model)
    sigmoid = next(n for n in model.graph if n.op_type == "Sigmoid")
    assert sigmoid.inputs[0].producer().op_type == "ReduceMean"
