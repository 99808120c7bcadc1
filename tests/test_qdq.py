"""QDQ models (QuantizeLinear -> DequantizeLinear pairs): quantised activations become neurons.

References: ONNX Runtime running the QDQ model itself. A pair quantises with round-half-to-even,
a neuron (QCFS) rounds half up, so the two may differ where x / scale lies within float rounding
of a half-integer (a tie); such differences are counted and must be rare.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnxruntime as ort
import pytest

from snncc import ops
from snncc.calibration.dataset import CalibrationData
from snncc.calibration.pipeline import CalibrationOptions
from snncc.compiler import CompileOptions, analyse_activations, canonicalize, compile_model, to_ir
from snncc.errors import ConversionError
from snncc.passes.match_qdq import METADATA_KEY
from snncc.session import make_session

RNG = np.random.default_rng(19)
U4, U8, I8, I32 = onnx.TensorProto.UINT4, onnx.TensorProto.UINT8, onnx.TensorProto.INT8, onnx.TensorProto.INT32


def run(model: onnx.ModelProto | str, **inputs: np.ndarray) -> list[np.ndarray]:
    """The QDQ model on ONNX Runtime; its extended optimisations feed uint4 tensors to MaxPool, which
    then fails to load (ORT 1.2x), so basic ones only."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"]).run(None, inputs)


def _init(name: str, array: np.ndarray, dtype: int | None = None) -> onnx.TensorProto:
    if dtype in (U4,):
        return oh.make_tensor(name, dtype, array.shape, array.reshape(-1).tolist())
    return onh.from_array(array, name)


def _pair(x: str, out: str, scale: str, zero: str) -> list[onnx.NodeProto]:
    return [oh.make_node("QuantizeLinear", [x, scale, zero], [f"{out}_q"], name=f"{out}/QuantizeLinear"),
            oh.make_node("DequantizeLinear", [f"{out}_q", scale, zero], [out], name=f"{out}/DequantizeLinear")]


def _weights(name: str, shape: tuple, in_scale: float, w_scale: float) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Per-output-channel int8 weights and an int32 bias at scale in_scale·w_scale, as ORT writes them."""
    w_scale = RNG.uniform(0.5, 1.5, shape[0]).astype(np.float32) * np.float32(w_scale)
    q = RNG.integers(-127, 128, shape).astype(np.int8)
    bias = np.round(RNG.normal(0, 0.1, shape[0]) / (in_scale * w_scale)).astype(np.int32)
    inits = [_init(f"{name}_q", q), _init(f"{name}_s", w_scale), _init(f"{name}_z", np.zeros(shape[0], np.int8)),
             _init(f"{name}_bq", bias), _init(f"{name}_bs", (w_scale * np.float32(in_scale)).astype(np.float32)),
             _init(f"{name}_bz", np.zeros(shape[0], np.int32))]
    nodes = [oh.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [name], axis=0, name=f"{name}/DQ"),
             oh.make_node("DequantizeLinear", [f"{name}_bq", f"{name}_bs", f"{name}_bz"], [f"{name}_b"], axis=0,
                          name=f"{name}/DQ_bias")]
    return nodes, inits


def _model(nodes, inits, out_shape=(None, 5)) -> onnx.ModelProto:
    graph = oh.make_graph(nodes, "qdq_toy", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [None, 3, 8, 8])],
                          [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, list(out_shape))], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    return model


def toy_qdq_model() -> onnx.ModelProto:
    """Input pair, uint4 activation (zero point 0), MaxPool + identity pair, ReLU + uint8 pair with
    zero point 240 (15 levels from 0), read-out: two neuron layers of 15 levels."""
    s_in, s1, s2 = 1 / 255, 0.05, 0.04
    w1_nodes, w1 = _weights("w1", (6, 3, 3, 3), s_in, 0.002)
    w2_nodes, w2 = _weights("w2", (8, 6, 3, 3), s1, 0.0015)
    inits = w1 + w2 + [
        _init("s_in", np.float32(s_in)), _init("z_in", np.uint8(0)),
        _init("s1", np.float32(s1)), _init("z1", np.zeros((), np.uint8), U4),
        _init("s2", np.float32(s2)), _init("z2", np.uint8(240)),
        _init("w3", RNG.normal(0, 0.3, (8, 5)).astype(np.float32)), _init("shape", np.array([0, -1], np.int64))]
    nodes = w1_nodes + w2_nodes + _pair("x", "xq", "s_in", "z_in") + [
        oh.make_node("Conv", ["xq", "w1", "w1_b"], ["c1"], pads=[1, 1, 1, 1], name="conv1")] + _pair("c1", "a1", "s1", "z1") + [
        oh.make_node("MaxPool", ["a1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1")] + _pair("p1", "p1q", "s1", "z1") + [
        oh.make_node("Conv", ["p1q", "w2", "w2_b"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        oh.make_node("Relu", ["c2"], ["r2"], name="relu2")] + _pair("r2", "a2", "s2", "z2") + [
        oh.make_node("GlobalAveragePool", ["a2"], ["g"], name="gap"),
        oh.make_node("Reshape", ["g", "shape"], ["f"], name="flatten"),
        oh.make_node("MatMul", ["f", "w3"], ["y"], name="head")]
    return _model(nodes, inits)


def _inputs(n: int) -> np.ndarray:
    return RNG.uniform(0, 1, (n, 3, 8, 8)).astype(np.float32)


def _snn_outputs(snn: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = make_session(snn)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _metadata(proto: onnx.ModelProto) -> dict:
    return json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])


def test_weight_dequantize_is_folded_bit_exactly():
    model = toy_qdq_model()
    reference = model.__deepcopy__(None)
    del reference.graph.output[:]
    reference.graph.output.extend([oh.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in ("w1", "w1_b")])
    expected = run(reference, x=_inputs(1))
    graph_model = to_ir(model)
    canonicalize(graph_model)
    conv = next(n for n in graph_model.graph if n.op_type == "Conv")
    assert not any(n.op_type == "DequantizeLinear" and n.inputs[0].const_value is not None for n in graph_model.graph)
    for value, want in zip(conv.inputs[1:], expected):
        assert value.const_value is not None
        np.testing.assert_array_equal(value.const_value.numpy(), want)


def test_pairs_become_neurons_and_identity_pairs_go():
    analysed = analyse_activations(to_ir(toy_qdq_model()))
    activations = [n for n in analysed.graph if n.op_type == "Activation"]
    assert [a.attributes["levels"].as_int() for a in activations] == [15, 15]
    np.testing.assert_allclose(activations[0].attributes["theta"].as_floats(), [0.05 * 15], rtol=1e-6)
    np.testing.assert_allclose(activations[1].attributes["theta"].as_floats(), [0.04 * 15], rtol=1e-6)
    assert "Relu" not in [n.op_type for n in analysed.graph]  # merged into the second pair
    quantize = [n.name for n in analysed.graph if n.op_type == "QuantizeLinear"]
    assert quantize == ["xq/QuantizeLinear"]  # the input pair stays: analog, the same at every step
    summary = json.loads(analysed.metadata_props[METADATA_KEY])
    assert summary == {"activations": 2, "identity_pairs": 1, "input_pairs": 1, "other_pairs": 0,
                       "dropped_signed_pairs": [], "exact": True}


def _differing_rows(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.sum(~np.all(np.isclose(a, b, rtol=1e-5, atol=1e-5), axis=1)))


def test_toy_qdq_model_is_exact_at_T_equal_levels():
    model = toy_qdq_model()
    x = _inputs(16)
    snn = compile_model(model, CompileOptions(steps=15)).model
    assert sum(ops.is_neuron(n) for n in snn.graph.node) == 2
    expected = run(model, x=x)[0]
    assert np.ptp(expected, axis=0).min() > 1e-3  # the toy is alive
    # away from ties (x / scale within float rounding of a half-integer) the outputs agree
    assert _differing_rows(_snn_outputs(snn, x), expected) <= 1


def residual_qdq_model() -> onnx.ModelProto:
    """a = act(conv1(x)); y = head(act(a + Q/DQ_signed(conv2(a)))): the signed pair sits between neurons."""
    w1_nodes, w1 = _weights("w1", (4, 3, 3, 3), 1.0, 0.002)
    w2_nodes, w2 = _weights("w2", (4, 4, 3, 3), 0.05, 0.002)
    inits = w1 + w2 + [_init("s1", np.float32(0.05)), _init("z0", np.uint8(0)), _init("s2", np.float32(0.03)),
                       _init("z128", np.uint8(128)), _init("s3", np.float32(0.01)),
                       _init("w3", RNG.normal(0, 0.3, (4, 5)).astype(np.float32)), _init("shape", np.array([0, -1], np.int64))]
    nodes = w1_nodes + w2_nodes + [oh.make_node("Conv", ["x", "w1", "w1_b"], ["c1"], pads=[1, 1, 1, 1], name="conv1")]
    nodes += _pair("c1", "a1", "s1", "z0") + [oh.make_node("Conv", ["a1", "w2", "w2_b"], ["c2"], pads=[1, 1, 1, 1], name="conv2")]
    nodes += _pair("c2", "c2q", "s2", "z128") + [oh.make_node("Add", ["a1", "c2q"], ["sum"], name="add")]
    nodes += _pair("sum", "a2", "s3", "z0") + [
        oh.make_node("GlobalAveragePool", ["a2"], ["g"], name="gap"),
        oh.make_node("Reshape", ["g", "shape"], ["f"], name="flatten"),
        oh.make_node("MatMul", ["f", "w3"], ["y"], name="head")]
    return _model(nodes, inits)


def test_signed_pair_between_neurons_is_refused_with_its_name():
    with pytest.raises(ConversionError) as error:
        compile_model(residual_qdq_model(), CompileOptions(steps=255, source="res.onnx"))
    assert [p.node for p in error.value.problems] == ["c2q/QuantizeLinear"]
    assert "--drop-signed-qdq" in str(error.value)


def test_dropping_signed_pairs_is_explicit_and_recorded():
    model = residual_qdq_model()
    snn = compile_model(model, CompileOptions(steps=255, drop_signed_qdq=True)).model
    summary = _metadata(snn)
    assert summary["dropped_signed_pairs"] == ["c2q/QuantizeLinear"] and summary["exact"] is False
    # what the SNN computes exactly: the QDQ model without that pair
    without = model.__deepcopy__(None)
    add = next(n for n in without.graph.node if n.name == "add")
    add.input[1] = "c2"
    x = _inputs(16)
    assert np.ptp(run(model, x=x)[0], axis=0).min() > 1e-3  # the toy is alive
    assert _differing_rows(_snn_outputs(snn, x), run(without, x=x)[0]) <= 1
    assert _differing_rows(_snn_outputs(snn, x), run(model, x=x)[0]) > 0  # and not the QDQ model


def test_cli_refuses_signed_pair_in_one_line(tmp_path):
    from click.testing import CliRunner

    from snncc.cli import main

    path = tmp_path / "res.onnx"
    onnx.save(residual_qdq_model(), path)
    result = CliRunner().invoke(main, ["compile", str(path), "--T", "255"])
    assert result.exit_code == 2
    assert "c2q/QuantizeLinear" in result.output and "--drop-signed-qdq" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(main, ["compile", str(path), "--T", "255", "--drop-signed-qdq"])
    assert result.exit_code == 0, result.output
    assert "approximate: dropped 1 signed Q/DQ pair(s)" in result.output


# ---- models quantised by onnxruntime.quantization.quantize_static from the bundled ReLU VGG ----

@pytest.fixture(scope="module")
def fashion():
    from snncc.data import load

    return load("fashion-mnist", "train")[0][:512], load("fashion-mnist", "test")


@pytest.fixture(scope="module")
def uint4_model(tmp_path_factory, fashion):
    from onnxruntime.quantization import QuantType

    return _quantise(tmp_path_factory, fashion[0], QuantType.QUInt4)


@pytest.fixture(scope="module")
def uint8_model(tmp_path_factory, fashion):
    from onnxruntime.quantization import QuantType

    return _quantise(tmp_path_factory, fashion[0], QuantType.QUInt8)


def _quantise(tmp_path_factory, calibration: np.ndarray, activation_type) -> str:
    """quantize_static in QDQ format (a second or two: not cached)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter({"input": calibration[i:i + 128]} for i in range(0, len(calibration), 128))

        def get_next(self):
            return next(self.batches, None)

    weights = QuantType.QInt4 if activation_type == QuantType.QUInt4 else QuantType.QInt8
    path = str(tmp_path_factory.mktemp("qdq") / f"fmnist_relu_vgg.{activation_type.name}.onnx")
    quantize_static("models/fmnist_relu_vgg.onnx", path, Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=activation_type, weight_type=weights)
    return path


def _qdq_logits(path: str, x: np.ndarray) -> np.ndarray:
    return run(path, input=x)[0]


def _logit_step(path: str) -> float:
    model = onnx.load(path)
    inits = {t.name: onh.to_array(t) for t in model.graph.initializer}
    dequantize = next(n for n in model.graph.node if n.output[0] == model.graph.output[0].name)
    return float(inits[dequantize.input[1]])


def _assert_agrees_but_for_ties(snn_logits, qdq_logits, step):
    """Argmax agrees wherever the QDQ model's top two logits are more than two output steps apart; logits
    differ by at most a few output steps, in few images (a tie flips one level, which moves later layers)."""
    disagree = snn_logits.argmax(1) != qdq_logits.argmax(1)
    top2 = np.sort(qdq_logits, axis=1)[:, -2:]
    assert np.all(top2[disagree, 1] - top2[disagree, 0] <= 2 * step + 1e-6)
    assert np.abs(snn_logits - qdq_logits).max() <= 3 * step + 1e-5
    assert _differing_rows(snn_logits, qdq_logits) <= 0.1 * len(qdq_logits)


def test_ort_uint4_model_runs_equal_at_T_15(uint4_model, fashion):
    path = uint4_model
    x = fashion[1][0][:128]
    snn = compile_model(onnx.load(path), CompileOptions(steps=15)).model  # time-expanded
    assert {p.key: p.value for p in snn.metadata_props}["snncc.case"] == "qcfs-lossless"
    _assert_agrees_but_for_ties(_snn_outputs(snn, x), _qdq_logits(path, x), _logit_step(path))


def test_ort_uint8_model_runs_equal_at_T_255(uint8_model, fashion):
    path = uint8_model
    x = fashion[1][0][:1000]
    snn = compile_model(onnx.load(path), CompileOptions(steps=255, fold_time=True)).model
    summary = _metadata(snn)
    assert summary["activations"] == 7 and summary["identity_pairs"] == 3 and summary["exact"]
    _assert_agrees_but_for_ties(_snn_outputs(snn, x), _qdq_logits(path, x), _logit_step(path))


def test_ort_uint4_model_calibrates_at_lower_T(uint4_model, fashion):
    """At T = 4 < 15 levels, layer-wise calibration ('ridge') brings the SNN back near the QDQ model."""
    path = uint4_model
    x = fashion[1][0][:500]
    reference = _qdq_logits(path, x).argmax(1)
    plain = compile_model(onnx.load(path), CompileOptions(steps=4, fold_time=True)).model
    calibrated = compile_model(onnx.load(path), CompileOptions(
        steps=4, fold_time=True, calibration_data=CalibrationData(fashion[0], "fashion-mnist:train[:512]"),
        calibration=CalibrationOptions(mode="ridge"))).model
    agreement = [np.mean(_snn_outputs(m, x).argmax(1) == reference) for m in (plain, calibrated)]
    assert agreement[1] > 0.8 and agreement[1] > agreement[0] + 0.3, agreement
