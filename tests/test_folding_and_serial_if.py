"""Temporal folding equals the expanded graph; the serial IF baseline equals a numpy IF simulation."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from snncc import ops
from snncc.compiler import CompileOptions, compile_model
from snncc.errors import SnnccError
from tests import graphs, nets
from tests.test_ops_function import neuron_model


@pytest.fixture(scope="module")
def resnet_ann():
    return nets.export(nets.build("resnet", 4), dynamo=False)


def _counts(spikes: np.ndarray, steps: int) -> np.ndarray:
    return (spikes.reshape(steps, -1, *spikes.shape[1:]) != 0).sum(axis=0)


@pytest.mark.parametrize("steps", [2, 4, 16])
def test_folded_graph_equals_expanded_graph(resnet_ann, steps):
    layers = ("/stem/stem.2/Mul_1", "/blocks/blocks.1/act/Mul_1")
    expanded = compile_model(resnet_ann, CompileOptions(steps=steps, emit_spikes=layers)).model
    folded = compile_model(resnet_ann, CompileOptions(steps=steps, fold_time=True, emit_spikes=layers)).model
    assert not any(n.op_type == ops.PARALLEL_SPIKE for n in folded.graph.node)
    assert sum(n.op_type == ops.SPIKE_COUNT for n in folded.graph.node) == 5
    assert not any(n.op_type in ("Tile", "ReduceMean") for n in folded.graph.node)  # no time axis left
    x = nets.sample_inputs(1000, seed=steps).numpy()
    out_e, out_f = nets.run(expanded, x), nets.run(folded, x)
    for name_e, name_f in zip(list(out_e)[1:], list(out_f)[1:]):
        counts_e, counts_f = _counts(out_e[name_e], steps), _counts(out_f[name_f], steps)
        assert np.mean(counts_e != counts_f) <= 1e-4
        assert np.all(np.diff((out_f[name_f].reshape(steps, -1) != 0).astype(np.int8), axis=0) >= 0)
    logits_e, logits_f = out_e["logits"], out_f["logits"]
    close = np.abs(logits_e - logits_f).max(axis=1) <= 1e-4 * np.abs(logits_e).max(axis=1)
    assert close.mean() >= 0.99


def test_unknown_emit_spikes_name_lists_the_layers(resnet_ann):
    with pytest.raises(SnnccError, match="neuron layers: /stem"):
        compile_model(resnet_ann, CompileOptions(steps=4, emit_spikes=("nope",)))


def if_reference(x, theta_pre, theta_post, psi, steps):
    """IF neuron with soft reset, membrane starting at θ_pre/2, simulated in numpy."""
    currents = x.reshape(steps, -1, *x.shape[1:]).astype(np.float64)
    membrane = np.broadcast_to(theta_pre / 2, currents.shape[1:]).astype(np.float64)
    out = []
    for current in currents:
        membrane = membrane + current + psi
        fires = membrane >= theta_pre
        membrane = membrane - np.where(fires, theta_pre, 0)
        out.append(np.where(fires, theta_post, 0.0))
    return np.stack(out).reshape(x.shape)


def serial_if_model(shape, pshape, steps):
    text = neuron_model(shape, pshape, steps)
    text.graph.node[0].op_type = ops.SERIAL_IF
    return text


@pytest.mark.parametrize("steps", [1, 3, 8, 32])
def test_serial_if_function_equals_numpy_simulation(steps):
    rng = np.random.default_rng(steps)
    shape, pshape = (steps * 4, 3, 2, 2), (3, 1, 1)
    theta_pre = rng.uniform(0.5, 1.5, pshape).astype(np.float32)
    theta_post = (theta_pre * 1.1).astype(np.float32)
    psi = rng.uniform(-0.05, 0.05, pshape).astype(np.float32)
    x = rng.normal(0.4, 0.8, shape).astype(np.float32)  # varies over time: IF differs from parallel here
    (y,) = graphs.run(serial_if_model(shape, pshape, steps), X=x, theta_pre=theta_pre, theta_post=theta_post, psi=psi)
    expected = if_reference(x, theta_pre, theta_post, psi, steps)
    assert np.mean(~np.isclose(y, expected)) <= 1e-3  # float32 vs float64 membrane: ties only


def test_serial_if_on_constant_input_equals_parallel_neuron():
    steps, shape, pshape = 8, (8 * 5, 4), (4,)
    rng = np.random.default_rng(0)
    x = np.tile(rng.uniform(-0.2, 1.2, (5, 4)).astype(np.float32), (steps, 1))
    params = dict(theta_pre=np.full(pshape, 1.0, np.float32), theta_post=np.full(pshape, 1.0, np.float32), psi=np.zeros(pshape, np.float32))
    (serial,) = graphs.run(serial_if_model(shape, pshape, steps), X=x, **params)
    (parallel,) = graphs.run(neuron_model(shape, pshape, steps), X=x, **params)
    assert np.array_equal(_counts(serial, steps), _counts(parallel, steps))


def test_compile_with_serial_if_neurons(resnet_ann):
    result = compile_model(resnet_ann, CompileOptions(steps=4, neuron="if"))
    kinds = [n.op_type for n in result.model.graph.node]
    assert kinds.count(ops.SERIAL_IF) == 5 and ops.PARALLEL_SPIKE not in kinds
    onnx.checker.check_model(result.model, full_check=True)
    x = nets.sample_inputs(64).numpy()
    assert nets.run(result.model, x)["logits"].shape == (64, 10)
    with pytest.raises(SnnccError, match="folding time needs parallel neurons"):
        CompileOptions(steps=4, neuron="if", fold_time=True)
