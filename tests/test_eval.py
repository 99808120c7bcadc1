"""`snncc eval` and snncc.spikes: spike, SOP and MAC counts against numpy counts on the spike
tensors themselves; accuracy/agreement; one-line errors for bad models, data and labels."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from models.qcfs import QCFS
from snncc import spikes
from snncc.compiler import CompileOptions, compile_model
from snncc.evaluate import evaluate_ann, evaluate_snn
from snncc.report import PJ_PER_AC, PJ_PER_MAC
from tests import nets

LEVELS = 4


class CountNet(nn.Module):
    """Every case the SOP count must get right: an analog first layer, a strided, padded, grouped
    conv, MaxPool between neurons, a dilated conv, and a GlobalAveragePool -> Linear head that
    runs after the T-mean."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.act1 = QCFS(LEVELS)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
        self.act2 = QCFS(LEVELS)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(6, 8, 3, padding=2, dilation=2)
        self.act3 = QCFS(LEVELS)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.act1(self.conv1(x))
        x = self.pool(self.act2(self.conv2(x)))
        x = self.act3(self.conv3(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@pytest.fixture(scope="module")
def count_net():
    torch.manual_seed(0)
    model = CountNet().eval()
    nets.set_thresholds(model, nets.sample_inputs(128, seed=5))
    return model, nets.export(model, dynamo=False)


def conv_fan_out(conv: nn.Conv2d, height: int, width: int) -> np.ndarray:
    """[C, H, W]: how many outputs of `conv` read each input element (explicit loops)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = conv.kernel_size, conv.stride, conv.padding, conv.dilation
    out_h = (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    fan = np.zeros((conv.in_channels, height, width))
    per_group = conv.out_channels // conv.groups
    for oh in range(out_h):
        for ow in range(out_w):
            for i in range(kh):
                for j in range(kw):
                    h, w = oh * sh - ph + i * dh, ow * sw - pw + j * dw
                    if 0 <= h < height and 0 <= w < width:
                        fan[:, h, w] += per_group  # each input channel feeds the out channels of its group
    return fan


def sops_by_loop(indicator: np.ndarray, fan: np.ndarray) -> float:
    """Σ over spikes of the fan-out at the spike's position: one explicit loop over the spikes."""
    return float(sum(fan[c, h, w] for _, c, h, w in np.argwhere(indicator)))


def neuron_outputs(model: onnx.ModelProto) -> list[str]:
    return [n.output[0] for n in model.graph.node if n.domain == "snn"]


@pytest.mark.parametrize("steps", [LEVELS, 3])
def test_counts_equal_numpy_counts_on_the_spike_tensors(count_net, steps):
    torch_model, ann = count_net
    snn = compile_model(ann, CompileOptions(steps=steps)).model
    x = nets.sample_inputs(24, seed=9).numpy()
    names = neuron_outputs(snn)
    trains = nets.run(snn, x, names)
    ind = [(trains[name] != 0) for name in names]  # [T*B, C, H, W] each
    batch = len(x)

    report = evaluate_snn(snn, x, None, "countnet", "random", batch_size=10)  # batches of 10, 10, 4
    counts = report.counts

    # spikes and firing rates: non-zero entries of the fetched trains
    for got, spikes_ in zip(counts.neurons, ind):
        assert got.spikes == spikes_.sum()
        assert got.neurons == np.prod(spikes_.shape[1:])
        assert got.firing_rate(batch) == pytest.approx(spikes_.sum() / spikes_.size)

    # SOPs, layer by layer
    pooled = ind[1].reshape(steps * batch, 6, 3, 2, 3, 2).max(axis=(3, 5))  # MaxPool on each step's spikes
    expected = {
        "conv2": sops_by_loop(ind[0], conv_fan_out(torch_model.conv2, 12, 12)),
        "conv3": sops_by_loop(pooled, conv_fan_out(torch_model.conv3, 3, 3)),
        "head": float(ind[2].sum()) * 10,  # GAP then Linear(8, 10): every spike reaches 10 outputs
    }
    by_name = {s.name.split("/")[1]: s for s in counts.synapses}
    assert by_name["conv1"].input == "analog" and by_name["conv1"].sops == 0
    for layer, sops in expected.items():
        assert by_name[layer].input == "spikes"
        assert by_name[layer].sops == sops, layer
    assert counts.sops == sum(expected.values())

    # MACs: the analog first layer runs once per input; dense MACs are the ANN's per layer
    conv1_macs = 4 * 12 * 12 * (1 * 3 * 3)
    assert by_name["conv1"].macs == conv1_macs * batch
    dense = {"conv1": conv1_macs, "conv2": 6 * 6 * 6 * (2 * 3 * 3), "conv3": 8 * 3 * 3 * (6 * 3 * 3), "head": 10 * 8}
    assert {k: s.dense_macs for k, s in by_name.items()} == dense

    # energy from those counts, per sample
    assert report.sops == pytest.approx(counts.sops / batch)
    assert report.snn_energy_uj == pytest.approx((counts.sops * PJ_PER_AC + conv1_macs * batch * PJ_PER_MAC) / batch * 1e-6)
    assert report.ann_energy_uj == pytest.approx(sum(dense.values()) * PJ_PER_MAC * 1e-6)
    assert report.to_json()["totals"]["sops_per_sample"] == pytest.approx(counts.sops / batch)


def test_ann_macs_counted_on_the_ann_graph(count_net):
    torch_model, ann = count_net
    x = nets.sample_inputs(5, seed=1).numpy()
    reference = evaluate_ann(ann, x, None, "ann")
    macs = 0
    shapes = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, key=name: shapes.__setitem__(key, o.shape))
             for name, m in torch_model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        torch_model(torch.from_numpy(x[:1]))
    for h in hooks:
        h.remove()
    for name, m in torch_model.named_modules():
        if isinstance(m, nn.Conv2d):
            macs += np.prod(shapes[name]) * m.in_channels // m.groups * np.prod(m.kernel_size)
        elif isinstance(m, nn.Linear):
            macs += np.prod(shapes[name]) * m.in_features
    assert reference.macs == macs
    with torch.no_grad():
        np.testing.assert_allclose(reference.logits, torch_model(torch.from_numpy(x)).numpy(), rtol=1e-4, atol=1e-4)


def test_folded_graph_gives_the_same_counts(count_net):
    _, ann = count_net
    x = nets.sample_inputs(16, seed=2).numpy()
    expanded = evaluate_snn(compile_model(ann, CompileOptions(steps=5)).model, x, None, "a", "d").counts
    folded = evaluate_snn(compile_model(ann, CompileOptions(steps=5, fold_time=True)).model, x, None, "b", "d").counts
    assert [n.spikes for n in folded.neurons] == [n.spikes for n in expanded.neurons]
    assert [s.sops for s in folded.synapses] == [s.sops for s in expanded.synapses]
    assert folded.firing_rate() == pytest.approx(expanded.firing_rate())


def test_residual_and_concat_nets_count_every_neuron():
    """Spikes on identity shortcuts reach no synapse there; BN after a Concat of two neuron layers
    keeps the events of both (its offset folds into the next layer's bias)."""
    x = nets.sample_inputs(8, seed=4).numpy()
    for name in ("resnet", "concat"):
        snn = compile_model(nets.export(nets.build(name, LEVELS), dynamo=False), CompileOptions(steps=LEVELS)).model
        trains = nets.run(snn, x, neuron_outputs(snn))
        counts = evaluate_snn(snn, x, None, name, "d").counts
        assert [n.spikes for n in counts.neurons] == [float((trains[o] != 0).sum()) for o in neuron_outputs(snn)]
        if name == "concat":
            mix = next(s for s in counts.synapses if "mix" in s.name)
            both = np.concatenate([trains[o] != 0 for o in neuron_outputs(snn)[:2]], axis=1)
            conv = nn.Conv2d(10, 8, 3, stride=2, padding=1)
            assert mix.sops == sops_by_loop(both, conv_fan_out(conv, 12, 12))


def test_probe_leaves_the_model_outputs_unchanged(count_net):
    _, ann = count_net
    snn = compile_model(ann, CompileOptions(steps=LEVELS)).model
    probe = spikes.build_probe(snn)
    onnx.checker.check_model(probe.model)
    x = nets.sample_inputs(6, seed=7).numpy()
    plain = nets.run(snn, x)
    probed = nets.run(probe.model, x)
    assert probe.outputs == 1
    np.testing.assert_array_equal(probed["logits"], plain["logits"])


# ------------------------------------------------------------------------------------------ CLI


def snncc(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snncc", *map(str, args)], capture_output=True, text=True)


def assert_user_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("snncc:") or "Error" in line]
    assert len(lines) == 1 and lines[0].startswith("snncc: error:"), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory, count_net):
    folder = tmp_path_factory.mktemp("eval")
    _, ann = count_net
    onnx.save(ann, folder / "ann.onnx")
    onnx.save(compile_model(ann, CompileOptions(steps=LEVELS)).model, folder / "snn.onnx")
    x = nets.sample_inputs(200, seed=3).numpy()
    y = np.random.default_rng(0).integers(0, 10, len(x))
    np.savez(folder / "data.npz", x=x, y=y)
    np.savez(folder / "unlabelled.npz", x=x)
    np.save(folder / "labels.npy", y)
    return folder


def test_eval_at_t_equal_levels_agrees_fully_and_writes_json(files):
    out = files / "report.json"
    result = snncc("eval", files / "snn.onnx", "--ann", files / "ann.onnx", "--data", files / "data.npz",
                   "--json", out, "--batch-size", 64)
    assert result.returncode == 0, result.stderr
    assert "agreement with the ANN: argmax 100.00%, max |logit difference| 0," in result.stdout
    assert "0.9 pJ per accumulate" in result.stdout and "4.6 pJ per multiply-accumulate" in result.stdout
    report = json.loads(out.read_text())
    assert report["agreement"]["argmax"] == 1.0 and report["agreement"]["max_abs_logit_diff"] == 0
    assert report["accuracy"] == report["ann"]["accuracy"]
    assert report["T"] == LEVELS and report["samples"] == 200
    assert [layer["name"].split("/")[1] for layer in report["synaptic_layers"]] == ["conv1", "conv2", "conv3", "head"]
    totals, energy = report["totals"], report["energy"]
    assert totals["ann_macs_source"] == "ann"
    assert totals["sops_per_sample"] == pytest.approx(sum(s["sops_per_sample"] for s in report["synaptic_layers"]))
    assert energy["snn_uj_per_sample"] == pytest.approx(
        (totals["sops_per_sample"] * 0.9 + totals["snn_macs_per_sample"] * 4.6) * 1e-6)
    for layer in report["neuron_layers"]:
        assert f"{layer['firing_rate']:.4f}" in result.stdout


def test_eval_labels_from_a_separate_file_and_without_labels(files):
    with_labels = snncc("eval", files / "snn.onnx", "--data", files / "unlabelled.npz", "--labels", files / "labels.npy")
    assert with_labels.returncode == 0, with_labels.stderr
    assert "SNN accuracy:" in with_labels.stdout
    reference = snncc("eval", files / "snn.onnx", "--data", files / "data.npz")
    assert [line for line in reference.stdout.splitlines() if "accuracy" in line] == \
        [line for line in with_labels.stdout.splitlines() if "accuracy" in line]
    unlabelled = snncc("eval", files / "snn.onnx", "--data", files / "unlabelled.npz")
    assert unlabelled.returncode == 0, unlabelled.stderr
    assert "SNN accuracy" not in unlabelled.stdout and "note: no labels" in unlabelled.stdout
    assert "firing rate" in unlabelled.stdout


def test_eval_errors_are_one_line(files, tmp_path):
    x = nets.sample_inputs(10, seed=1).numpy()
    np.savez(tmp_path / "bad_shape.npz", x=x[:, :, :5], y=np.zeros(10, int))
    assert_user_error(snncc("eval", files / "snn.onnx", "--data", tmp_path / "bad_shape.npz"), "does not fit")
    np.savez(tmp_path / "flat.npz", x=x.reshape(10, -1))
    assert_user_error(snncc("eval", files / "snn.onnx", "--data", tmp_path / "flat.npz"), "does not fit")
    assert_user_error(snncc("eval", files / "ann.onnx", "--data", files / "data.npz"), "not a spiking model", "snncc compile")
    assert_user_error(snncc("eval", files / "snn.onnx", "--data", files / "unlabelled.npz", "--labels", tmp_path / "no.npy"),
                      "labels file", "not found")
    np.save(tmp_path / "short.npy", np.zeros(3, int))
    assert_user_error(snncc("eval", files / "snn.onnx", "--data", files / "unlabelled.npz", "--labels", tmp_path / "short.npy"),
                      "3 labels for 200 inputs")
    np.savez(tmp_path / "nolabels.npz", z=np.zeros(200))
    assert_user_error(snncc("eval", files / "snn.onnx", "--data", files / "unlabelled.npz", "--labels", tmp_path / "nolabels.npz"),
                      "no array 'y'")
    np.save(tmp_path / "big.npy", np.full(200, 12))
    assert_user_error(snncc("eval", files / "snn.onnx", "--data", files / "unlabelled.npz", "--labels", tmp_path / "big.npy"),
                      "outside the model's 10 classes")
    assert_user_error(snncc("eval", files / "snn.onnx", "--data", files / "data.npz", "--json", tmp_path / "no" / "r.json"),
                      "does not exist")
    assert_user_error(snncc("eval", files / "snn.onnx", "--data", files / "data.npz", "--json", tmp_path), "is a folder")


def test_lossless_residue_is_explained_with_the_inputs_it_touched():
    """A lossless SNN whose float32 logits differ from the ANN's on some inputs says why, and on how many."""
    from snncc.evaluate import Agreement
    from snncc.report import EvalReport
    from snncc.spikes import Counts

    metadata = {"snncc.T": "4", "snncc.levels": "4", "snncc.case": "qcfs-lossless"}
    report = EvalReport("m.snn.onnx", "d.npz", 400, metadata, "runtime", Counts(samples=400),
                        agreement=Agreement(argmax=0.9975, max_abs_logit_diff=0.344, relative_close=0.9775))
    text = report.format_text()
    assert "float rounding" in text and "one spike more or less" in text and "touched 9 of 400 inputs" in text
    report.agreement = Agreement(1.0, 0.0, 1.0)
    assert "float rounding" not in report.format_text()
