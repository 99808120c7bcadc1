"""End to end: torch QCFS networks -> ONNX (both exporters) -> snncc -> ONNX Runtime.

The reference is the ANN itself: at T = T̃ the SNN must equal the QCFS ANN neuron by neuron;
at T ≠ T̃ (no calibration) it must equal the DA-QCFS ANN with φ = ψ = 0, i.e. the same network
with its QCFS layers quantised to T levels.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from snncc import ops
from snncc.compiler import CompileOptions, compile_model
from tests import nets

N_INPUTS = 1000
LEVELS = 4
NETS = ["vgg", "resnet", "concat", "poolfirst"]


def _neurons(snn: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in snn.graph.node if n.domain == ops.DOMAIN and n.op_type == ops.PARALLEL_SPIKE]


def _initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def _prefloor_names(ann: onnx.ModelProto, snn: onnx.ModelProto) -> dict[str, str]:
    """For each neuron: the ANN value just before its QCFS Floor (the ANN's level plus fraction)."""
    floors = {n.name: n.input[0] for n in ann.graph.node if n.op_type == "Floor"}
    found = {}
    for neuron in _neurons(snn):
        source = next(p.value for p in neuron.metadata_props if p.key == "snncc.source").split(",")
        matches = [floors[name] for name in source if name in floors]
        assert len(matches) == 1, f"neuron {neuron.name} does not name exactly one ANN Floor: {source}"
        found[neuron.name] = matches[0]
    return found


def assert_snn_equals_quantised_ann(ann: onnx.ModelProto, snn: onnx.ModelProto, steps: int, x: np.ndarray):
    """Spike counts equal the ANN's levels (except float ties), trains are binary and sorted, logits agree."""
    prefloor = _prefloor_names(ann, snn)
    neurons = _neurons(snn)
    ann_out = nets.run(ann, x, list(prefloor.values()))
    snn_out = nets.run(snn, x, [n.output[0] for n in neurons])
    batch = len(x)
    compared = ties = 0
    for neuron in neurons:
        spikes = snn_out[neuron.output[0]]
        theta_post = _initializer(snn, neuron.input[2]).reshape(-1)
        trains = spikes.reshape(steps, batch, *spikes.shape[1:])
        fired = trains != 0
        channel_shape = (1, -1) + (1,) * (trains.ndim - 3) if theta_post.size > 1 else (1,)
        values_ok = np.isclose(trains, 0) | np.isclose(trains, np.broadcast_to(theta_post.reshape(channel_shape), trains.shape[1:]))
        assert values_ok.all(), f"{neuron.name}: outputs other than 0 and theta_post"
        assert np.all(np.diff(fired.astype(np.int8), axis=0) >= 0), f"{neuron.name}: spike train not sorted"
        level = ann_out[prefloor[neuron.name]]
        if level.shape != spikes.shape[1:] and level.shape != (batch, *spikes.shape[1:]):
            continue  # MaxPool moved after this neuron: the ANN's Floor sees the pooled tensor
        counts = fired.sum(axis=0)
        expected = np.clip(np.floor(level), 0, steps)
        tie = np.abs(level - np.round(level)) < 1e-4 * max(steps, 1)
        wrong = counts != expected
        assert not np.any(wrong & ~tie), f"{neuron.name}: {int(np.sum(wrong & ~tie))} spike counts differ from the ANN"
        assert np.all(np.abs(counts - expected)[wrong] <= 1)
        compared += counts.size
        ties += int(np.sum(wrong))
    assert compared > 0
    assert ties <= 1e-4 * compared, f"{ties} float-tie differences among {compared} neurons"
    ann_logits, snn_logits = ann_out["logits"], snn_out["logits"]
    scale = np.abs(ann_logits).max(axis=1)
    close = np.abs(ann_logits - snn_logits).max(axis=1) <= 1e-4 * scale
    assert close.mean() >= 0.99, f"logits close on only {close.mean():.2%} of inputs"
    assert np.all(ann_logits.argmax(1) == snn_logits.argmax(1))


@pytest.fixture(scope="module", params=NETS)
def qcfs_net(request):
    return request.param, nets.build(request.param, LEVELS)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_lossless_at_t_equal_levels(qcfs_net, dynamo):
    name, model = qcfs_net
    ann = nets.export(model, dynamo)
    result = compile_model(ann, CompileOptions(steps=LEVELS))
    assert {layer.case for layer in result.layers} == {"qcfs-lossless"}
    x = nets.sample_inputs(N_INPUTS, seed=7).numpy()
    assert_snn_equals_quantised_ann(ann, result.model, LEVELS, x)


@pytest.mark.parametrize("steps", [2, 8])
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_other_t_equals_da_qcfs_with_zero_shift(qcfs_net, dynamo, steps):
    name, model = qcfs_net
    result = compile_model(nets.export(model, dynamo), CompileOptions(steps=steps))
    assert {layer.case for layer in result.layers} == {"qcfs-T-differs"}
    nets.set_levels(model, steps)
    try:
        reference = nets.export(model, dynamo)  # DA-QCFS(θ, φ=0, ψ=0, T) is QCFS with T levels
    finally:
        nets.set_levels(model, LEVELS)
    x = nets.sample_inputs(N_INPUTS, seed=11).numpy()
    assert_snn_equals_quantised_ann(reference, result.model, steps, x)
