"""Every bad input gets one clear line, exit code 2, no traceback and no output file.

The command runs in-process through click's CliRunner (fast, and lets the tests monkeypatch the
2 GB limit and interrupt a write); tests/test_cli.py runs the real process for the common cases.
Also here: inputs that must *work* though they are unusual (external data, several outputs,
dynamic spatial dimensions, models past protobuf's 2 GB limit).
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snncc import modelio
from snncc.calibration.dataset import CalibrationData
from snncc.cli import main
from snncc.compiler import CompileOptions, compile_model
from tests import equivalence, graphs

RNG = np.random.default_rng(0)


def _floats(n: int, scale: float = 1.0) -> str:
    return ",".join(f"{v:.4f}" for v in RNG.normal(size=n) * scale)


# conv -> ReLU -> conv -> ReLU6 -> global mean: a small convertible ReLU model (w1 > 1 kB, so that
# it goes to external data when the model is saved that way)
RELU_TEXT = """g (float[N,2,%(h)s,%(w)s] x) => (float[N,3] y)
    <float[16,2,3,3] w1 = {%(w1)s}, float[3,16,1,1] w2 = {%(w2)s}, float zero = {0.0}, float six = {6.0}> {
    c1 = Conv <pads: ints = [1,1,1,1]> (x, w1)
    r1 = Relu (c1)
    c2 = Conv (r1, w2)
    r2 = %(relu6)s
    pooled = GlobalAveragePool (r2)
    y = Flatten (pooled)
}"""
WEIGHTS = {"w1": _floats(288), "w2": _floats(48, 0.5)}


def relu_model(h="4", w="4", opset: int = 21) -> onnx.ModelProto:
    relu6 = "Clip (c2, zero, six)" if opset >= 11 else "Clip <min: float = 0.0, max: float = 6.0> (c2)"
    model = graphs.model(RELU_TEXT % dict(h=h, w=w, relu6=relu6, **WEIGHTS), opset=opset)
    return raw_tensors(model)


def raw_tensors(model: onnx.ModelProto) -> onnx.ModelProto:
    """Initializers as raw_data (the text parser writes float_data), so external data applies to them."""
    for i, tensor in enumerate(model.graph.initializer):
        model.graph.initializer[i].CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(tensor), tensor.name))
    return model


def calibration(n=16, h=4, w=4, seed=1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 2, h, w)).astype(np.float32)


def snncc(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


PROGRESS = re.compile(r"^[^:]+: (batch|run) \d+ of \d+ \(\d+%\), ")  # snncc.progress lines in a log


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


def assert_user_error(result, *needles: str, folder: Path | None = None, output: Path | None = None) -> str:
    """Exit 2, one line on stderr starting 'snncc: error:', no traceback, nothing written.
    (Progress lines of work done before the error, such as calibration, and warnings about the
    calibration data may precede it.)"""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = [line for line in result.stderr.strip().splitlines()
             if not PROGRESS.match(line) and not line.startswith("snncc: warning:")]
    assert len(lines) == 1 and lines[0].startswith("snncc: error:"), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    if output is not None:
        assert not output.exists()
        assert not output.with_name(output.name + ".data").exists()
    if folder is not None:
        assert leftovers(folder) == []
    return lines[0]


@pytest.fixture()
def files(tmp_path):
    model = tmp_path / "relu.onnx"
    onnx.save(relu_model(), model)
    np.save(tmp_path / "calib.npy", calibration())
    return tmp_path


def compile_args(folder: Path, model: str | Path = "relu.onnx", *extra) -> list:
    return ["compile", folder / model, "--T", 4, "--calib", folder / "calib.npy", "-o", folder / "out.onnx", *extra]


def test_good_model_compiles(files):
    result = snncc(*compile_args(files))
    assert result.exit_code == 0, result.output
    onnx.checker.check_model(onnx.load(files / "out.onnx"), full_check=True)
    assert leftovers(files) == []


# --- the model file -------------------------------------------------------------------------


def test_missing_file_and_folder(files):
    assert_user_error(snncc(*compile_args(files, "missing.onnx")), "missing.onnx", "no such file", output=files / "out.onnx")
    assert_user_error(snncc("compile", files, "--T", 4), "is a folder")
    assert_user_error(snncc("inspect", files / "missing.onnx"), "no such file")


@pytest.mark.parametrize("content", [b"", b"hello, this is text\n", bytes(range(256)) * 4,
                                     onnx.helper.make_tensor("t", 1, [2], [1.0, 2.0]).SerializeToString()],
                         ids=["empty", "text", "binary", "tensor-proto"])
def test_not_an_onnx_model(files, content):
    (files / "bad.onnx").write_bytes(content)
    assert_user_error(snncc(*compile_args(files, "bad.onnx")), "bad.onnx", "not a valid ONNX model",
                      output=files / "out.onnx", folder=files)
    assert_user_error(snncc("inspect", files / "bad.onnx"), "not a valid ONNX model")


def test_truncated_protobuf_at_every_tenth(files):
    data = (files / "relu.onnx").read_bytes()
    for cut in sorted({int(len(data) * k / 10) for k in range(1, 10)} | {len(data) - 1}):
        (files / "cut.onnx").write_bytes(data[:cut])
        assert_user_error(snncc(*compile_args(files, "cut.onnx")), "cut.onnx", output=files / "out.onnx", folder=files)


def test_structurally_invalid_models(files):
    h = onnx.helper
    dangling = h.make_model(h.make_graph([h.make_node("Relu", ["nope"], ["y"])], "g",
                                         [h.make_tensor_value_info("x", 1, ["N", 2])], [h.make_tensor_value_info("y", 1, ["N", 2])]),
                            opset_imports=[h.make_opsetid("", 17)])
    unknown = h.make_model(h.make_graph([h.make_node("Relu", ["x"], ["r"]), h.make_node("FooBar", ["r"], ["y"])], "g",
                                        [h.make_tensor_value_info("x", 1, ["N", 2])], [h.make_tensor_value_info("y", 1, ["N", 2])]),
                           opset_imports=[h.make_opsetid("", 17)])
    for name, model in (("dangling", dangling), ("unknown", unknown)):
        onnx.save(model, files / f"{name}.onnx")
        assert_user_error(snncc("compile", files / f"{name}.onnx", "--T", 4, "-o", files / "out.onnx"),
                          f"{name}.onnx", "not a valid ONNX model", output=files / "out.onnx")


def test_model_without_activations(files):
    onnx.save(graphs.model("g (float[N,2] x) => (float[N,2] y) { y = Neg (x) }"), files / "neg.onnx")
    assert_user_error(snncc("compile", files / "neg.onnx", "--T", 4, "-o", files / "out.onnx"), "no activation",
                      output=files / "out.onnx")


@pytest.mark.parametrize("opset", [6, 22, 24])
def test_opset_outside_the_supported_range(files, opset):
    model = graphs.model("g (float[N,2] x) => (float[N,2] y) { y = Relu (x) }", opset=opset)
    onnx.save(model, files / "old.onnx")
    np.save(files / "c2.npy", np.ones((4, 2), np.float32))
    line = assert_user_error(snncc("compile", files / "old.onnx", "--T", 4, "--calib", files / "c2.npy", "-o", files / "out.onnx"),
                             f"opset {opset}", "7-21", output=files / "out.onnx")
    assert "re-export" in line


def test_opset_at_both_ends_of_the_range_converts(files):
    for opset in (9, 21):
        onnx.save(relu_model(opset=opset), files / f"m{opset}.onnx")
        result = snncc(*compile_args(files, f"m{opset}.onnx", "--force"))
        assert result.exit_code == 0, result.output


def test_non_convertible_model_lists_every_node(files):
    text = """g (float[N,2,4,4] x) => (float[N,2,4,4] y) <float[2,2,1,1] w = {1.0,0.5,-0.5,1.0}> {
        c = Conv (x, w)
        r = Relu (c)
        s = Sigmoid (r)
        m = Mul (r, s)
        l = LRN <size: int = 3> (m)
        c2 = Conv (l, w)
        y = Relu (c2)
    }"""
    onnx.save(graphs.model(text), files / "mixed.onnx")
    line = assert_user_error(snncc(*compile_args(files, "mixed.onnx")), "cannot convert 3 node(s)",
                             "'s' (Sigmoid)", "'m' (Mul)", "'l' (LRN)", output=files / "out.onnx")
    assert "mixed.onnx" in line


# --- T and other options --------------------------------------------------------------------


@pytest.mark.parametrize("steps", [0, -1, 4097, 10**9])
def test_bad_number_of_steps(files, steps):
    assert_user_error(snncc("compile", files / "relu.onnx", "--T", steps, "--calib", files / "calib.npy",
                            "-o", files / "out.onnx"), "T must be an integer in 1..4096", output=files / "out.onnx")


def test_bad_levels(files):
    assert_user_error(snncc(*compile_args(files, "relu.onnx", "--levels", 0)), "levels T̃", output=files / "out.onnx")


# --- the output path ------------------------------------------------------------------------


def test_output_in_a_missing_folder(files):
    assert_user_error(snncc("compile", files / "relu.onnx", "--T", 4, "--calib", files / "calib.npy",
                            "-o", files / "nowhere" / "out.onnx"), "does not exist")
    assert not (files / "nowhere").exists()


def test_output_equal_to_the_input(files):
    before = (files / "relu.onnx").read_bytes()
    os.symlink(files / "relu.onnx", files / "link.onnx")
    for same in (files / "relu.onnx", files / "sub" / ".." / "relu.onnx", files / "link.onnx"):
        (files / "sub").mkdir(exist_ok=True)
        assert_user_error(snncc("compile", files / "relu.onnx", "--T", 4, "--calib", files / "calib.npy",
                                "-o", same, "--force"), "equals the input")
    assert (files / "relu.onnx").read_bytes() == before


def test_output_is_a_folder_or_exists(files):
    (files / "folder.onnx").mkdir()
    assert_user_error(snncc(*compile_args(files)[:-2], "-o", files / "folder.onnx", "--force"), "is a folder")
    (files / "out.onnx").write_bytes(b"keep me")
    assert_user_error(snncc(*compile_args(files)), "already exists", "--force")
    assert (files / "out.onnx").read_bytes() == b"keep me"


def test_output_folder_not_writable(files, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(files))
    monkeypatch.setattr(modelio.tempfile, "mkdtemp", refuse)
    assert_user_error(snncc(*compile_args(files)), "out.onnx", "cannot write", "Permission denied",
                      output=files / "out.onnx", folder=files)


def test_interrupted_write_leaves_nothing(files, monkeypatch):
    """Ctrl-C while the file is being written: no output, no temporary file; an old output survives."""
    real_save = onnx.save

    def save_half_then_interrupt(model, path, *args, **kwargs):
        Path(path).write_bytes(model.SerializeToString()[: model.ByteSize() // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(modelio.onnx, "save", save_half_then_interrupt)
    result = snncc(*compile_args(files))
    assert result.exit_code == 1 and "Aborted" in result.output  # click's answer to Ctrl-C
    assert not (files / "out.onnx").exists() and leftovers(files) == []
    (files / "out.onnx").write_bytes(b"previous")
    assert snncc(*compile_args(files, "relu.onnx", "--force")).exit_code == 1
    assert (files / "out.onnx").read_bytes() == b"previous" and leftovers(files) == []
    monkeypatch.setattr(modelio, "_PROTOBUF_LIMIT", 64)  # the external-data path
    assert snncc(*compile_args(files, "relu.onnx", "--force")).exit_code == 1
    assert (files / "out.onnx").read_bytes() == b"previous" and leftovers(files) == []
    assert not (files / "out.onnx.data").exists()
    monkeypatch.setattr(modelio.onnx, "save", real_save)


# --- calibration data -----------------------------------------------------------------------


@pytest.mark.parametrize("make,needle", [
    (lambda: calibration(h=5), "shape"),
    (lambda: calibration()[:, 0], "shape"),
    (lambda: calibration().astype(np.int32), "dtype"),
    (lambda: np.where(calibration() > 1, np.nan, calibration()).astype(np.float32), "NaN"),
    (lambda: np.where(calibration() > 1, np.inf, calibration()).astype(np.float32), "infinite"),
    (lambda: calibration()[:0], "empty"),
    (lambda: np.array([{"x": 1}], dtype=object), "cannot read"),
], ids=["spatial", "rank", "int", "nan", "inf", "empty", "pickle"])
def test_bad_calibration_arrays(files, make, needle):
    np.save(files / "calib.npy", make(), allow_pickle=True)
    assert_user_error(snncc(*compile_args(files)), "calib.npy", needle, output=files / "out.onnx", folder=files)


def test_bad_calibration_files(files):
    (files / "calib.npy").write_bytes(b"\x93NUMPY garbage")
    assert_user_error(snncc(*compile_args(files)), "cannot read", output=files / "out.onnx")
    np.savez(files / "calib.npz", y=np.zeros(3))
    assert_user_error(snncc(*compile_args(files)[:-4], "--calib", files / "calib.npz", "-o", files / "out.onnx"),
                      "no array 'x'")
    assert_user_error(snncc(*compile_args(files)[:-4], "--calib", files / "none.npy", "-o", files / "out.onnx"),
                      "none.npy")


# --- several inputs or outputs, dynamic spatial dimensions --------------------------------------


def test_several_data_inputs_with_calibration_is_a_precise_error(files):
    text = "g (float[N,2,4,4] x, float[N,2,4,4] z) => (float[N,2,4,4] y) { s = Add (x, z)\n y = Relu (s) }"
    onnx.save(graphs.model(text), files / "two.onnx")
    assert_user_error(snncc(*compile_args(files, "two.onnx")), "2 data inputs", "exactly one", output=files / "out.onnx")


def test_several_data_inputs_of_a_qcfs_model_convert(files):
    """Without calibration data nothing needs a single input: each input is encoded on its own."""
    text = """g (float[N,2] x, float[N,2] z) => (float[N,2] y) <float theta = {1.0}, float levels = {4.0}, float lo = {0.0},
        float hi = {1.0}, float half = {0.5}> {
        a = Add (x, z)
        s = Div (a, theta)
        c = Clip (s, lo, hi)
        m = Mul (c, levels)
        h = Add (m, half)
        f = Floor (h)
        d = Div (f, levels)
        y = Mul (d, theta)
    }"""
    onnx.save(graphs.model(text), files / "two.onnx")
    result = snncc("compile", files / "two.onnx", "--T", 4, "-o", files / "out.onnx")
    assert result.exit_code == 0, result.output
    x, z = RNG.uniform(-0.5, 1.5, (2, 64, 2)).astype(np.float32)
    (y,) = graphs.run(onnx.load(files / "out.onnx"), x=x, z=z)
    assert np.allclose(y, np.clip(np.floor((x + z) * 4 + 0.5), 0, 4) / 4, atol=1e-6)


def test_several_outputs_convert_and_each_equals_the_reference():
    text = """g (float[N,2,4,4] x) => (float[N,2,4,4] y, float[N,2] y2) <float[2,2,1,1] w = {1.0,0.5,-0.5,1.0}, int64[2] ax = {2, 3}> {
        c = Conv (x, w)
        r = Relu (c)
        c2 = Conv (r, w)
        y = Relu (c2)
        c3 = Conv (r, w)
        r3 = Relu (c3)
        y2 = ReduceMean <keepdims: int = 0> (r3, ax)
    }"""
    ann = graphs.model(text)
    x = calibration(64, seed=2) * 2
    snn = compile_model(ann, CompileOptions(steps=4, calibration_data=CalibrationData(calibration(64) * 2, "random"))).model
    assert [o.name for o in snn.graph.output] == ["y", "y2"]
    equivalence.assert_snn_equals_reference(snn, equivalence.derived_reference(ann, snn, 4), 4, x)


def test_dynamic_spatial_dimensions_convert_and_run_at_any_size():
    ann = relu_model(h="H", w="W")
    snn = compile_model(ann, CompileOptions(steps=4, calibration_data=CalibrationData(calibration(16, 4, 4), "random"))).model
    reference = equivalence.derived_reference(ann, snn, 4)
    for h, w in ((4, 4), (7, 5), (1, 9)):
        equivalence.assert_snn_equals_reference(snn, reference, 4, calibration(32, h, w, seed=h * w))


# --- external data and the 2 GB limit -------------------------------------------------------


def test_external_data_input_compiles_like_the_inline_model(files):
    onnx.save(copy.deepcopy(relu_model()), files / "ext.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="ext.weights", size_threshold=0)
    assert onnx.load(files / "ext.onnx", load_external_data=False).graph.initializer[0].data_location == onnx.TensorProto.EXTERNAL
    assert snncc(*compile_args(files, "ext.onnx")).exit_code == 0
    inline = files / "inline.onnx"
    assert snncc("compile", files / "relu.onnx", "--T", 4, "--calib", files / "calib.npy", "-o", inline).exit_code == 0
    assert (files / "out.onnx").read_bytes() == inline.read_bytes()


def test_broken_external_data(files):
    onnx.save(copy.deepcopy(relu_model()), files / "ext.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="ext.weights", size_threshold=0)
    weights = (files / "ext.weights").read_bytes()
    (files / "ext.weights").write_bytes(weights[:10])
    assert_user_error(snncc(*compile_args(files, "ext.onnx")), "ext.onnx", "external data", output=files / "out.onnx")
    (files / "ext.weights").unlink()
    assert_user_error(snncc(*compile_args(files, "ext.onnx")), "ext.onnx", "external data", output=files / "out.onnx")
    model = onnx.load(files / "ext.onnx", load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../outside.weights"
    onnx.save(model, files / "escape.onnx")
    assert_user_error(snncc(*compile_args(files, "escape.onnx")), "escape.onnx", "outside", output=files / "out.onnx")


def test_past_the_2gb_limit_outputs_use_external_data(files, monkeypatch):
    """With the limit lowered, every model is "too large": the output's tensors go to out.onnx.data,
    the written model runs like the inline one, recompiling does not grow the data file, and the
    input path through the checker-by-file works too."""
    inline = files / "inline.onnx"
    assert snncc("compile", files / "relu.onnx", "--T", 4, "--calib", files / "calib.npy", "-o", inline).exit_code == 0
    monkeypatch.setattr(modelio, "_PROTOBUF_LIMIT", 64)
    assert snncc(*compile_args(files)).exit_code == 0
    data = files / "out.onnx.data"
    assert data.is_file() and data.stat().st_size > 0
    stored = onnx.load(files / "out.onnx", load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in stored.graph.initializer)
    size = data.stat().st_size
    assert snncc(*compile_args(files, "relu.onnx", "--force")).exit_code == 0
    assert data.stat().st_size == size and leftovers(files) == []
    x = calibration(8, seed=9)
    a, b = equivalence.run(onnx.load(inline), x), equivalence.run(onnx.load(files / "out.onnx"), x)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert snncc("inspect", files / "out.onnx").exit_code == 0  # loads by file through the checker


def test_save_leaves_the_model_in_memory_intact(tmp_path, monkeypatch):
    model = compile_model(relu_model(), CompileOptions(steps=4, calibration_data=CalibrationData(calibration(), "r"))).model
    before = model.SerializeToString()
    monkeypatch.setattr(modelio, "_PROTOBUF_LIMIT", 64)
    modelio.save_model(model, tmp_path / "a.onnx")
    assert model.SerializeToString() == before


# --- corrupted files: never a crash ---------------------------------------------------------

_GOOD = relu_model().SerializeToString()


@settings(max_examples=int(os.environ.get("SNNCC_FUZZ_EXAMPLES", "100")), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, len(_GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.none() | st.integers(1, len(_GOOD) - 1))
def test_corrupted_model_bytes_give_a_user_error_or_compile(tmp_path_factory, edits, cut):
    """Random byte overwrites (and a truncation): `snncc compile` writes a model, or answers with a
    one-line user error; never a traceback."""
    data = bytearray(_GOOD)
    for position, value in edits:
        data[position] = value
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "relu.onnx").write_bytes(bytes(data[:cut]))
    np.save(folder / "calib.npy", calibration())
    result = snncc(*compile_args(folder))
    if result.exit_code == 0:
        assert (folder / "out.onnx").is_file()
    else:
        assert_user_error(result, output=folder / "out.onnx", folder=folder)
