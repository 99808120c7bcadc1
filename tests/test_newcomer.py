"""A newcomer's first hour (issue #16), on the bundled Fashion-MNIST models and data: one-line
errors instead of tracebacks, no silently ignored option or nonsense data, the calibration check,
honest progress in logs, consistent output, and batch dimensions named N and T*N.

The command line runs in-process (click's CliRunner: stderr is not a terminal, as in a log)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from snncc import data as datasets
from snncc.calibration.dataset import CalibrationData
from snncc.calibration.sanity import check_calibration, looks_like_byte_pixels
from snncc.cli import main
from snncc.errors import SnnccWarning
from snncc.progress import ProgressLog

MODELS = Path(__file__).resolve().parent.parent / "models"


def snncc(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def assert_user_error(result, *needles):
    """Exit code 2 and one error line (after any progress lines), no traceback."""
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert [line for line in lines if line.startswith("snncc: error:")] == lines[-1:], result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """model.onnx / relu.onnx (the bundled models), their SNNs at T = 4, and small data files."""
    path = tmp_path_factory.mktemp("newcomer")
    shutil.copy(MODELS / "fmnist_qcfs_vgg_t4.onnx", path / "model.onnx")
    shutil.copy(MODELS / "fmnist_relu_vgg.onnx", path / "relu.onnx")
    x, y = datasets.load("fashion-mnist", "test")
    train_x, train_y = datasets.load("fashion-mnist", "train")
    np.savez(path / "test.npz", x=x[:64], y=y[:64])
    np.savez(path / "calib.npz", x=train_x[:128], y=train_y[:128])
    assert snncc("compile", path / "model.onnx", "--T", 4).exit_code == 0
    assert snncc("compile", path / "relu.onnx", "--T", 4, "--calib", path / "calib.npz").exit_code == 0
    return path


# item 2: tracebacks -> one line
@pytest.mark.parametrize("x,needle", [(np.zeros((0, 1, 28, 28), np.float32), "no samples"),
                                      (np.array(["a", "b"]), "dtype <U1")])
def test_eval_empty_or_string_data_is_one_line(folder, x, needle):
    np.savez(folder / "bad.npz", x=x)
    assert_user_error(snncc("eval", folder / "model.snn.onnx", "--data", folder / "bad.npz"), "bad.npz", needle)


# item 3: silent nonsense
def test_eval_refuses_integer_pixels_as_calib_does(folder):
    x, y = datasets.load("fashion-mnist", "test")
    np.savez(folder / "u8.npz", x=(x[:32] * 255).round().astype(np.uint8), y=y[:32])
    assert_user_error(snncc("eval", folder / "model.snn.onnx", "--data", folder / "u8.npz"), "uint8", "pixels / 255")
    assert_user_error(snncc("compile", folder / "model.onnx", "--T", 8, "--calib", folder / "u8.npz", "-o",
                            folder / "u8.snn.onnx"), "uint8")


def test_eval_refuses_an_snn_as_the_ann(folder):
    assert_user_error(snncc("eval", folder / "relu.snn.onnx", "--ann", folder / "relu.snn.onnx", "--data",
                            folder / "test.npz"), "compiled SNN, not an ANN")


def test_options_that_would_be_ignored_are_errors_or_warnings(folder):
    out = folder / "ignored.snn.onnx"
    assert_user_error(snncc("compile", folder / "relu.onnx", "--T", 4, "--levels", 8, "--calib", folder / "calib.npz",
                            "-o", out), "no QCFS activation")
    assert_user_error(snncc("compile", folder / "model.onnx", "--T", 4, "--preprocess", "resize=28", "-o", out),
                      "--preprocess", "no --calib")
    assert_user_error(snncc("compile", folder / "model.onnx", "--T", 8, "--calib", folder / "calib.npz",
                            "--preprocess", "resize=28", "-o", out), "image folders only")
    result = snncc("compile", folder / "model.onnx", "--T", 8, "--calib", folder / "calib.npz", "--calib-samples",
                   99999, "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "snncc: warning: calibration data" in result.stderr and "99999 samples asked for, it holds 128" in result.stderr


def test_missing_native_library_is_an_error_not_a_fallback(folder):
    result = snncc("eval", folder / "model.snn.onnx", "--data", folder / "test.npz",
                   env={"SNNCC_NATIVE_LIB": str(folder / "nonexistent.so")})
    assert_user_error(result, "SNNCC_NATIVE_LIB", "nonexistent.so", "no such file")


def test_out_of_range_labels_fail_before_the_snn_runs(folder, monkeypatch):
    from snncc import evaluate

    x, y = datasets.load("fashion-mnist", "test")
    evaluation = evaluate.SnnEvaluation(onnx.load(folder / "model.snn.onnx"), "model.snn.onnx", x[:8], "test")
    monkeypatch.setattr(evaluate, "run_batches", lambda *a, **k: pytest.fail("the SNN ran before the label check"))
    with pytest.raises(evaluate.SnnccError, match="outside the model's 10 classes"):
        evaluation.run(y[:8] + 10)


# item 4: calibration data that cannot be right
def _ann_predictions(model_path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0].argmax(1)


def test_calibration_check_reports_the_anns_accuracy_on_labelled_data(folder):
    calib = np.load(folder / "calib.npz")
    expected = np.mean(_ann_predictions(folder / "relu.onnx", calib["x"]) == calib["y"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check = check_calibration(onnx.load(folder / "relu.onnx"), CalibrationData(calib["x"], "calib", calib["y"]))
    assert not [w for w in caught if issubclass(w.category, SnnccWarning)]
    assert f"{100 * expected:.1f}% accurate on the 128 calibration samples" in check.summary
    assert check.warnings == []
    result = snncc("compile", folder / "relu.onnx", "--T", 4, "--calib", folder / "calib.npz", "-o", folder / "c.onnx")
    assert f"calibration check: the ANN is {100 * expected:.1f}% accurate" in result.stdout


def test_calibration_check_warns_on_0_255_floats_and_wrong_normalisation(folder):
    calib = np.load(folder / "calib.npz")
    model = onnx.load(folder / "relu.onnx")
    x255 = calib["x"] * 255
    assert looks_like_byte_pixels(x255) and not looks_like_byte_pixels(calib["x"])
    with pytest.warns(SnnccWarning, match="0-255 pixel values"):
        check_calibration(model, CalibrationData(x255, "x255"))
    # the README's old image-folder normalisation, (x - 0.5) / 0.25, on this model: predictions collapse
    shifted = (calib["x"] - 0.5) / 0.25
    predicted = _ann_predictions(folder / "relu.onnx", shifted)
    share = np.bincount(predicted).max() / len(predicted)
    assert share > 0.6  # the reference: the ANN itself, run directly
    with pytest.warns(SnnccWarning, match=f"for {100 * share:.1f}% of it"):
        check = check_calibration(model, CalibrationData(shifted, "shifted"))
    assert f"for {100 * share:.1f}%" in check.summary
    np.savez(folder / "calib255.npz", x=x255)
    result = snncc("compile", folder / "relu.onnx", "--T", 4, "--calib", folder / "calib255.npz", "-o", folder / "w.onnx")
    assert result.exit_code == 0 and "snncc: warning: calibration data" in result.stderr


# item 5: progress in logs
def test_progress_log_reports_every_tenth_or_30_seconds_with_eta():
    now = [0.0]
    log = ProgressLog(20, "SNN", "batch", clock=lambda: now[0])
    lines = []
    for _ in range(20):
        now[0] += 3.0
        lines.append(log.step())
    shown = [line for line in lines if line]
    assert len(shown) == 10  # every 2 steps (10%)
    assert shown[0] == "SNN: batch 2 of 20 (10%), 6s elapsed, ETA 54s" and shown[-1].endswith("1m00s elapsed")
    slow = ProgressLog(1000, "SNN", "batch", clock=lambda: now[0])
    now[0] += 31.0
    assert slow.step() == "SNN: batch 1 of 1000 (0%), 31s elapsed, ETA 8h36m"
    assert slow.step() is None


def test_eval_in_a_log_prints_batch_k_of_n(folder):
    result = snncc("eval", folder / "model.snn.onnx", "--data", folder / "test.npz", "--batch-size", 16)
    assert result.exit_code == 0, result.stderr
    assert "SNN on 64 inputs: batch 4 of 4 (100%)" in result.stderr  # the last line is always printed


# item 6: output consistency
def test_eval_json_levels_and_relu_tilde_t_are_consistent(folder):
    assert snncc("eval", folder / "model.snn.onnx", "--data", folder / "test.npz", "--json", folder / "e.json").exit_code == 0
    assert json.loads((folder / "e.json").read_text())["levels"] == 4  # as in the sweep JSON
    assert_user_error(snncc("eval", folder / "model.snn.onnx", "--data", folder / "test.npz", "--json",
                            folder / "e.json"), "already exists", "--force")
    assert snncc("eval", folder / "model.snn.onnx", "--data", folder / "test.npz", "--json", folder / "e.json",
                 "--force").exit_code == 0
    relu_eval = snncc("eval", folder / "relu.snn.onnx", "--data", folder / "test.npz").stdout
    relu_inspect = snncc("inspect", folder / "relu.snn.onnx").stdout
    for text in (relu_eval, relu_inspect):
        assert "no T̃ (ReLU/Clip model" in text and "T̃=-" not in text and "T̃ = ," not in text
    assert '{"' not in relu_inspect and "calibration: 128 samples of" in relu_inspect
    assert "mode ridge" in relu_inspect and "head lstsq" in relu_inspect  # the default at T = 4: --calibrate auto


def test_scalar_thresholds_print_as_one_value(folder):
    text = snncc("inspect", folder / "model.onnx").stdout
    assert "θ=2.906, T̃=4" in text and ".." not in text.split("θ=")[1].split(",")[0]


def test_compile_table_keeps_names_and_aligns_columns(folder):
    result = snncc("compile", folder / "relu.onnx", "--T", 4, "--calib", folder / "calib.npz", "-o", folder / "t.onnx")
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("neuron layer"))
    rows = [line for line in lines[header + 2:] if line.startswith("/")]
    names = [n.name for n in onnx.load(folder / "t.onnx").graph.node if n.op_type == "ParallelSpike"]
    assert [row.split()[0] for row in rows] == names  # full names, e.g. /features/features.12/ParallelSpike
    head = lines[header]
    for column in ("case", "source"):  # flush left: every row's cell starts where the header's does
        start = head.index(column)
        assert all(row[start - 2:start] == "  " and row[start] != " " for row in rows), column
    for column in ("theta_pre", "theta_post", "psi"):  # flush right: every cell ends where the header's does
        end = head.index(column) + len(column)
        assert all(row[end - 1] != " " and row[end] == " " for row in rows), column
    assert any(line.startswith("(C: channels with their own theta and psi") for line in lines)


# item 8: batch dimensions in Netron
@pytest.mark.parametrize("extra,names", [((), {"N", "T*N"}), (("--fold-time",), {"N"})])
def test_batch_dims_are_named_n_and_t_times_n_and_true_at_run_time(folder, extra, names):
    out = folder / f"dims{len(extra)}.snn.onnx"
    assert snncc("compile", folder / "model.onnx", "--T", 4, *extra, "-o", out).exit_code == 0
    model = onnx.load(out)
    values = list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info)
    dims = {v.name: v.type.tensor_type.shape.dim for v in values}
    found = {d.dim_param for ds in dims.values() for d in ds if d.HasField("dim_param")}
    assert found == names
    assert all(d.HasField("dim_param") or d.HasField("dim_value") for ds in dims.values() for d in ds)
    # at run time, a batch of 3: every N is 3, every T*N is 12 (the reference: ONNX Runtime's shapes)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    float_values = [v for v in model.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
                    and v.type.tensor_type.shape.dim and v.type.tensor_type.shape.dim[0].HasField("dim_param")]
    probe.graph.output.extend(float_values)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    x = datasets.load("fashion-mnist", "test")[0][:3]
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input": x})))
    assert float_values
    for value in float_values:
        expected = {"N": 3, "T*N": 12}[value.type.tensor_type.shape.dim[0].dim_param]
        assert outputs[value.name].shape[0] == expected, value.name


# item 7: the footnote to "exact"
def test_lossless_residue_counts_the_neurons_off_the_anns_levels(folder):
    """Against an ANN whose first Conv bias is shifted, the neurons off its levels are exactly those
    where the shifted ANN's levels differ from the true ANN's (the SNN equals the true ANN)."""
    from snncc.evaluate import lossless_residue

    snn, ann = onnx.load(folder / "model.snn.onnx"), onnx.load(folder / "model.onnx")
    x = datasets.load("fashion-mnist", "test")[0][:6]
    shifted = onnx.ModelProto()
    shifted.CopyFrom(ann)
    conv = next(n for n in shifted.graph.node if n.op_type == "Conv")
    bias = next(t for t in shifted.graph.initializer if t.name == conv.input[2])
    bias.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(bias) + np.float32(0.3), bias.name))
    activations = [p.value.split(",")[-1] for n in snn.graph.node if n.op_type == "ParallelSpike"
                   for p in n.metadata_props if p.key == "snncc.source"]
    thetas = [float(onnx.numpy_helper.to_array(next(t for t in snn.graph.initializer if t.name == n.input[2])).max())
              for n in snn.graph.node if n.op_type == "ParallelSpike"]
    outputs = {n.name: n.output[0] for n in ann.graph.node}
    levels = []
    for model in (ann, shifted):
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        probe.graph.output.extend(onnx.helper.make_tensor_value_info(outputs[a], onnx.TensorProto.FLOAT, None)
                                  for a in activations)
        run = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input": x})
        levels.append([np.round(a * 4 / theta) for a, theta in zip(run[1:], thetas)])
    expected = sum(int(np.count_nonzero(a != b)) for a, b in zip(*levels))
    fake_snn_logits = np.zeros((len(x), 10), np.float32)  # every input "differs": all are examined
    residue = lossless_residue(snn, shifted, x, fake_snn_logits, np.ones((len(x), 10), np.float32))
    assert residue.inputs == len(x) and residue.compared == sum(a.size for a in levels[0]) and expected > 100
    assert abs(residue.flipped - expected) <= max(2, expected // 1000)  # float ties of the SNN itself


def test_compile_at_large_t_suggests_folding(folder):
    expanded = snncc("compile", folder / "model.onnx", "--T", 16, "-o", folder / "t16.snn.onnx")
    assert expanded.exit_code == 0 and "--fold-time gives the same outputs" in expanded.stderr
    folded = snncc("compile", folder / "model.onnx", "--T", 16, "--fold-time", "-o", folder / "t16f.snn.onnx")
    assert folded.exit_code == 0 and "--fold-time" not in folded.stderr
