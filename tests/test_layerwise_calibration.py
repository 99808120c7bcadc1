"""Layer-wise calibration against small numpy references of each objective.

- the neuron search: its θ_pre, θ_post, ψ reach the least output error a brute-force numpy search
  over the same candidates finds (to the histogram's resolution);
- bias correction: the corrected layer's mean input current equals the ANN's;
- the ridge refit equals the numpy closed form on an explicitly unfolded conv; the least-squares
  head equals numpy's lstsq;
- end to end: the compiled SNN computes the calibrated quantised ANN, whose weights changed only
  inside the compiled model (and the metadata says which), on residual and Concat nets too;
- on a slice of Fashion-MNIST, the layer-wise modes beat the paper's pipeline at T = 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

from snncc.ann_graph import copy_model, da_qcfs_activation, original_activation, quantised_ann
from snncc.calibration import affine_refit, neuron_search
from snncc.calibration.dataset import CalibrationData
from snncc.calibration.layer_graph import affine_producer, neuron_inputs, prefix_model, segment_model, synaptic_subgraph
from snncc.calibration.pipeline import CalibrationOptions, calibrate_parameters
from snncc.compiler import CompileOptions, analyse_activations, compile_model, to_ir
from snncc.passes._activation import NeuronParameters, is_activation, set_parameters
from snncc.passes.set_qcfs_parameters import SetQcfsParametersPass
from tests import equivalence, random_cnn
from tests.random_cnn import Act, Block, NetSpec

REPO = Path(__file__).resolve().parent.parent


def _numpy_neuron(z, theta_pre, theta_post, psi, steps):
    """(θ_post/T)·clip(floor((z + ψ)·T/θ_pre + 1/2), 0, T), per channel on axis 0."""
    level = np.clip(np.floor((z + psi[:, None]) * steps / theta_pre[:, None] + 0.5), 0, steps)
    return theta_post[:, None] / steps * level


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_search_reaches_the_brute_force_minimum_of_the_output_error(steps):
    rng = np.random.default_rng(steps)
    channels, n = 3, 2000
    z_ann = rng.normal(0.3, 1.0, (n, channels)) * np.array([1.0, 2.0, 0.5])
    z_q = z_ann + rng.normal(0.1, 0.3, z_ann.shape)  # the SNN's input current: noisy and shifted
    r = np.maximum(z_ann, 0)
    top = r.max(axis=0)
    stats = neuron_search.OutputErrorStatistics(top.astype(np.float32))
    stats.add(z_q.astype(np.float32), z_ann.astype(np.float32), r.astype(np.float32))
    shift = z_ann.mean(axis=0) - z_q.mean(axis=0)
    np.testing.assert_allclose(stats.mean_shift(), shift, rtol=1e-5, atol=1e-6)
    fit = stats.search(steps, shift)
    zc, rc = z_q.T, r.T
    found = ((_numpy_neuron(zc, fit.theta_pre, fit.theta_post, fit.psi, steps) - rc) ** 2).sum(axis=1)
    best = np.full(channels, np.inf)
    for fraction in neuron_search.THETA_FRACTIONS:  # brute force: every candidate on the raw samples
        theta_pre = fraction * top
        for offset in neuron_search.PSI_OFFSETS:
            psi = shift + offset * theta_pre / steps
            level = _numpy_neuron(zc, theta_pre, np.full(channels, float(steps)), psi, steps)  # k·1
            # the least-squares scale of k against r: d/dθ_post Σ(θ_post·k/T − r)² = 0
            post = steps * (level * rc).sum(axis=1) / np.maximum((level ** 2).sum(axis=1), 1e-12)
            post = np.maximum(post, 0)
            errors = ((post[:, None] / steps * level - rc) ** 2).sum(axis=1)
            best = np.minimum(best, errors)
    for c in range(channels):  # and θ_post is optimal for the chosen θ_pre, ψ: no scaled value does better
        for factor in (0.98, 1.02):
            post = fit.theta_post.copy()
            post[c] *= factor
            worse = ((_numpy_neuron(zc, fit.theta_pre, post, fit.psi, steps) - rc) ** 2).sum(axis=1)
            assert worse[c] >= found[c]
    assert np.all(found <= best * 1.002 + 1e-9), (found, best)
    assert np.all(found >= best * 0.95)  # it is the grid's optimum, not a different objective
    np.testing.assert_allclose(fit.error, found, rtol=0.02)


def test_silent_channel_stays_silent():
    stats = neuron_search.OutputErrorStatistics(np.array([1.0, 0.0], np.float32))
    z = np.stack([np.linspace(-1, 1, 100), np.linspace(-2, -1, 100)], axis=1).astype(np.float32)
    stats.add(z, z, np.maximum(z, 0))
    fit = stats.search(2, np.zeros(2))
    assert fit.theta_post[1] == 0 and fit.psi[1] == 0 and fit.theta_pre[1] > 0 and fit.theta_post[0] > 0


def _conv_model(weight, bias, pads, strides, group=1, dilations=(1, 1)):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    node = onnx.helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=pads, strides=strides, group=group,
                                 dilations=list(dilations), kernel_shape=list(weight.shape[2:]))
    graph = onnx.helper.make_graph([node], "g", [x], [y], [onnx.numpy_helper.from_array(weight, "w"),
                                                           onnx.numpy_helper.from_array(bias, "b")])
    return ir.from_proto(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]))


def _numpy_im2col(x, kernel, pads, strides, dilations=(1, 1)):
    """Rows [n·H_out·W_out, C·kh·kw] by explicit loops over output positions."""
    padded = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    n, c, h, w = padded.shape
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    out_h, out_w = (h - span[0]) // strides[0] + 1, (w - span[1]) // strides[1] + 1
    rows = []
    for i in range(n):
        for p in range(out_h):
            for q in range(out_w):
                patch = padded[i, :, p * strides[0]:p * strides[0] + span[0]:dilations[0],
                               q * strides[1]:q * strides[1] + span[1]:dilations[1]]
                rows.append(patch.reshape(-1))
    return np.array(rows), out_h, out_w


@pytest.mark.parametrize("group,dilations", [(1, (1, 1)), (2, (1, 1)), (1, (2, 1))])
def test_ridge_refit_equals_the_numpy_closed_form(group, dilations):
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(4, 4 // group, 3, 3)).astype(np.float32)
    bias = rng.normal(size=4).astype(np.float32)
    pads, strides = [1, 0, 1, 1], [1, 2]
    model = _conv_model(weight, bias, pads, strides, group, dilations)
    node = next(iter(model.graph))
    x = rng.normal(size=(3, 4, 7, 6)).astype(np.float32)
    cols, out_h, out_w = _numpy_im2col(x, (3, 3), pads, strides, dilations)
    conv = ort.InferenceSession(ir.to_proto(model).SerializeToString(), providers=["CPUExecutionProvider"])
    y_conv = conv.run(None, {"x": x})[0].transpose(0, 2, 3, 1).reshape(-1, 4)
    target = rng.normal(size=(3, 4, out_h, out_w)).astype(np.float32)
    layer = affine_refit.AffineLayer(node)
    equations = affine_refit.NormalEquations()
    equations.add(*layer.rows(x, target, np.random.default_rng(0), out_h * out_w))  # every position
    ridge = 0.3
    solution = equations.solve(layer.parameters(), ridge)
    y_rows = target.transpose(0, 2, 3, 1).reshape(-1, 4)
    per_in = 4 // group
    for g in range(group):
        design = np.concatenate([cols.reshape(len(cols), 4, 9)[:, g * per_in:(g + 1) * per_in].reshape(len(cols), -1),
                                 np.ones((len(cols), 1))], axis=1).astype(np.float64)
        outs = slice(g * (4 // group), (g + 1) * (4 // group))
        prior = np.concatenate([weight[outs].reshape(4 // group, -1).T, bias[None, outs]]).astype(np.float64)
        gram = design.T @ design
        lam = ridge * np.trace(gram) / len(gram)
        expected = np.linalg.solve(gram + lam * np.eye(len(gram)), design.T @ y_rows[:, outs] + lam * prior)
        np.testing.assert_allclose(design @ prior, y_conv[:, outs], rtol=1e-4, atol=1e-4)  # the unfolding is the conv
        np.testing.assert_allclose(solution[g], expected, rtol=1e-4, atol=1e-5)
    layer.write(model.graph, solution)
    refit = node.inputs[1].const_value.numpy()
    assert refit.shape == weight.shape and node.inputs[1].name != "w"  # a copy: a shared "w" stays intact
    np.testing.assert_allclose(refit[0].reshape(-1), solution[0][:-1, 0], rtol=1e-6)


def test_least_squares_head_equals_numpy_lstsq():
    rng = np.random.default_rng(2)
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)
    weight, bias = rng.normal(size=(3, 5)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    node = onnx.helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, alpha=0.5, beta=2.0)
    graph = onnx.helper.make_graph([node], "g", [x], [y], [onnx.numpy_helper.from_array(weight, "w"),
                                                           onnx.numpy_helper.from_array(bias, "b")])
    model = ir.from_proto(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]))
    features = rng.normal(size=(50, 5)).astype(np.float32)
    target = rng.normal(size=(50, 3)).astype(np.float32)
    layer = affine_refit.AffineLayer(next(iter(model.graph)))
    equations = affine_refit.NormalEquations()
    equations.add(*layer.rows(features, target, np.random.default_rng(0), 1))
    layer.write(model.graph, equations.solve(layer.parameters(), 0.0))
    expected = np.linalg.lstsq(np.concatenate([features, np.ones((50, 1))], axis=1), target, rcond=None)[0]
    gemm = next(iter(model.graph))
    np.testing.assert_allclose(0.5 * gemm.inputs[1].const_value.numpy().T, expected[:5], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(2.0 * gemm.inputs[2].const_value.numpy(), expected[5], rtol=1e-4, atol=1e-5)


CONV_NET = NetSpec(in_channels=1, size=8, seed=3, blocks=(Block("conv", channels=4), Block("maxpool"),
                                                          Block("conv", channels=6, act=Act("relu6"))))
RESIDUAL_NET = NetSpec(in_channels=2, size=6, seed=4, blocks=(
    Block("conv", channels=4), Block("residual", channels=4), Block("concat", channels=3, act2=Act("clip", bound=2.0)),
    Block("conv", channels=5, depthwise=False)))


def _calibrated(ann, data, steps, options):
    """What compile_model does before expanding time: the calibrated analysed model."""
    model = analyse_activations(to_ir(onnx.ModelProto.FromString(ann.SerializeToString())))
    SetQcfsParametersPass(steps, None)(model)
    summary = calibrate_parameters(model, data, steps, options)
    return model, summary


def test_bias_correction_makes_the_means_match():
    ann = random_cnn.build(CONV_NET)
    x = random_cnn.inputs(CONV_NET, 64, seed=5)
    data = CalibrationData(x, "random")
    original = analyse_activations(to_ir(ann))
    model, summary = _calibrated(ann, data, 2, CalibrationOptions(mode="layerwise", keep_head=True))
    assert summary["bias_corrected"] and summary["head_layers"] == [] and summary["refit"] == []
    for node in [n for n in model.graph if is_activation(n)]:
        if affine_producer(node) is None or affine_producer(node).name not in summary["bias_corrected"]:
            continue
        name = node.inputs[0].name
        z_q = equivalence.run(prefix_model(model, da_qcfs_activation(2), [name]), x)[name]
        z_ann = equivalence.run(prefix_model(original, original_activation, [name]), x)[name]
        np.testing.assert_allclose(z_q.mean(axis=(0, 2, 3)), z_ann.mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("spec,mode", [(CONV_NET, "ridge"), (RESIDUAL_NET, "ridge"), (RESIDUAL_NET, "layerwise")],
                         ids=["conv-ridge", "residual-concat-ridge", "residual-concat-layerwise"])
def test_snn_equals_the_calibrated_quantised_ann(spec, mode):
    steps = 3
    ann = random_cnn.build(spec)
    data = CalibrationData(random_cnn.inputs(spec, 96, seed=1), "random")
    options = CalibrationOptions(mode=mode)
    snn = compile_model(ann, CompileOptions(steps=steps, calibration_data=data, calibration=options)).model
    model, summary = _calibrated(ann, data, steps, options)
    metadata = json.loads({p.key: p.value for p in snn.metadata_props}["snncc.calibration"])
    assert metadata["mode"] == mode and metadata["head"] == "lstsq" and metadata["head_layers"]
    assert metadata["refit"] == summary["refit"] and (metadata["refit"] != []) == (mode == "ridge")
    x = random_cnn.inputs(spec, 32, seed=2)
    expected = equivalence.run(quantised_ann(model, steps), x)
    got = equivalence.run(snn, x)
    equivalence.assert_outputs_close(expected, got, list(expected))
    original = equivalence.run(equivalence.original_ann(ann), x)
    assert not all(np.allclose(original[k], expected[k]) for k in expected)  # calibration changed something


def test_synaptic_subgraph_maps_the_previous_neurons_to_the_input_current():
    ann = random_cnn.build(RESIDUAL_NET)
    x = random_cnn.inputs(RESIDUAL_NET, 8, seed=3)
    model = analyse_activations(to_ir(ann))
    activations = [n for n in model.graph if is_activation(n)]
    everything = [v.name for n in activations for v in (n.inputs[0], n.outputs[0])]
    values = equivalence.run(prefix_model(model, original_activation, everything), x)
    for node in activations[1:]:
        proto, inputs, output = synaptic_subgraph(model, node.name, original_activation)
        feeds = {name: values[name] if name in values else x for name in inputs}
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        got = session.run([output], feeds)[0]
        np.testing.assert_allclose(got, values[node.inputs[0].name], rtol=1e-5, atol=1e-5)


def test_segments_from_the_neuron_inputs_reproduce_the_quantised_model():
    """Progressive propagation: a segment cut at `neuron_inputs`, fed the whole model's values there,
    gives the whole model's input current of the next activation (residual and Concat branches)."""
    ann = random_cnn.build(RESIDUAL_NET)
    x = random_cnn.inputs(RESIDUAL_NET, 8, seed=3)
    model = analyse_activations(to_ir(ann))
    activations = [n for n in model.graph if is_activation(n)]
    rng = np.random.default_rng(0)
    for node in activations:
        channels = node.inputs[0].shape[1]
        set_parameters(node, NeuronParameters(rng.uniform(0.5, 1.5, channels).astype(np.float32),
                                              rng.uniform(0.5, 1.5, channels).astype(np.float32),
                                              rng.uniform(-0.2, 0.2, channels).astype(np.float32), "test"))
    emit = da_qcfs_activation(3)
    names = [n.inputs[0].name for n in activations]
    whole = equivalence.run(prefix_model(model, emit, names), x)
    cut_somewhere = False
    for node in activations:
        cuts = [v.name for v in neuron_inputs(node.inputs[0])]
        cut_somewhere |= any(name in whole for name in cuts)
        session = ort.InferenceSession(segment_model(model, emit, cuts, [node.inputs[0].name]).SerializeToString(),
                                       providers=["CPUExecutionProvider"])
        got = session.run(None, {name: whole[name] if name in whole else x for name in cuts})[0]
        np.testing.assert_allclose(got, whole[node.inputs[0].name], rtol=1e-5, atol=1e-5)
    assert cut_somewhere


def test_layerwise_modes_beat_the_paper_at_low_t_on_fashion_mnist():
    from snncc.data import load

    ann = onnx.load(REPO / "models" / "fmnist_relu_vgg.onnx")
    data = CalibrationData(load("fashion-mnist", "train")[0][:256], "fashion-mnist:train[:256]")
    x, y = load("fashion-mnist", "test")
    x, y = x[:600], y[:600]
    accuracy = {}
    for name, options in (("paper", CalibrationOptions(da_qcfs=True)), ("ridge", CalibrationOptions(mode="ridge"))):
        snn = compile_model(ann, CompileOptions(steps=2, fold_time=True, calibration_data=data, calibration=options)).model
        logits = next(iter(equivalence.run(snn, x).values()))
        accuracy[name] = float(np.mean(logits.argmax(1) == y))
    assert accuracy["ridge"] >= accuracy["paper"] + 0.05, accuracy  # measured: 92.3% against 75.5%


def test_copy_of_model_is_unchanged_by_calibration():
    ann = random_cnn.build(CONV_NET)
    data = CalibrationData(random_cnn.inputs(CONV_NET, 32, seed=1), "random")
    model = analyse_activations(to_ir(ann))
    before = {name: v.const_value.numpy().copy() for name, v in copy_model(model).graph.initializers.items()}
    calibrate_parameters(model, data, 2, CalibrationOptions(mode="ridge"))
    for name, array in before.items():  # the refit adds initializers and leaves the old ones as they were
        if name in model.graph.initializers:
            np.testing.assert_array_equal(model.graph.initializers[name].const_value.numpy(), array)


def test_cli_calibration_modes(tmp_path):
    from tests.test_cli import assert_user_error, snncc

    onnx.save(random_cnn.build(CONV_NET), tmp_path / "net.onnx")
    np.save(tmp_path / "calib.npy", random_cnn.inputs(CONV_NET, 48, seed=1))
    expected = {(): ("ridge", "lstsq"), ("--calibrate",): ("ridge", "lstsq"), ("--calibrate", "paper"): ("paper", None),
                ("--calibrate", "layerwise", "--keep-head"): ("layerwise", "keep"), ("--no-calibrate",): ("thresholds", None)}
    for i, (flags, (mode, head)) in enumerate(expected.items()):
        out = tmp_path / f"out{i}.onnx"
        result = snncc("compile", tmp_path / "net.onnx", "--T", 2, "--calib", tmp_path / "calib.npy", "-o", out, *flags)
        assert result.returncode == 0, result.stderr
        metadata = json.loads({p.key: p.value for p in onnx.load(out).metadata_props}["snncc.calibration"])
        assert (metadata["mode"], metadata.get("head")) == (mode, head), flags
    assert_user_error(snncc("compile", tmp_path / "net.onnx", "--T", 2, "--calib", tmp_path / "calib.npy",
                            "--calibrate", "best"), "best")


def test_ridge_choice_minimises_the_numpy_held_out_error():
    rng = np.random.default_rng(7)
    k, outs = 6, 2
    truth = rng.normal(size=(k, outs))
    prior = truth + rng.normal(0, 0.3, truth.shape)  # the original weights: near the truth
    x_fit, x_held = rng.normal(size=(10, k)), rng.normal(size=(200, k))
    y_fit, y_held = (x @ truth + rng.normal(0, 1.0, (len(x), outs)) for x in (x_fit, x_held))
    fit, held = affine_refit.NormalEquations(), affine_refit.NormalEquations()
    fit.add(x_fit[None].astype(np.float32), y_fit[None].astype(np.float32))
    held.add(x_held[None].astype(np.float32), y_held[None].astype(np.float32))
    choices = (0.001, 0.01, 0.1, 1.0, 10.0, 100.0)
    errors = []
    for ridge in choices:
        gram = x_fit.T @ x_fit
        lam = ridge * np.trace(gram) / k
        w = np.linalg.solve(gram + lam * np.eye(k), x_fit.T @ y_fit + lam * prior)
        np.testing.assert_allclose(fit.solve(prior[None], ridge)[0], w, rtol=1e-4, atol=1e-5)
        errors.append(float(((x_held @ w - y_held) ** 2).sum()))
        # the held-out error up to the constant Σy²
        np.testing.assert_allclose(held.error(w[None]), errors[-1] - float((y_held ** 2).sum()), rtol=1e-4)
    best = int(np.argmin(errors))
    assert 0 < best < len(choices) - 1  # neither end: the choice is made by the data
    assert affine_refit.select_ridge(fit, held, prior[None], choices) == choices[best]
