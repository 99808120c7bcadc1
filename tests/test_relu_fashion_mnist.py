"""End to end on real data: the bundled Fashion-MNIST ReLU VGG, converted training-free.

For T in {4, 8, 16, 32} the compiled SNN's accuracy on the 10k test images must equal that of
the DA-QCFS ANN built here independently of snncc's passes: the original ONNX graph with each
Relu node replaced (by this test's own graph surgery) by DA-QCFS with the neuron parameters the
compiled SNN carries.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnxruntime as ort
import pytest

from snncc import ops
from snncc.calibration.dataset import CalibrationData
from snncc.compiler import CompileOptions, compile_model
from snncc.data import load

MODEL = Path(__file__).resolve().parent.parent / "models" / "fmnist_relu_vgg.onnx"


def _neuron_parameters(snn: onnx.ModelProto) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per source Relu name: θ_pre, θ_post, ψ (read from ParallelSpike or SpikeCount + rate Mul)."""
    inits = {t.name: onh.to_array(t).reshape(-1) for t in snn.graph.initializer}
    result = {}
    for node in snn.graph.node:
        source = next((p.value for p in node.metadata_props if p.key == "snncc.source"), None)
        steps = next((a.i for a in node.attribute if a.name == "T"), None)
        if node.op_type == ops.PARALLEL_SPIKE:
            result[source] = tuple(inits[n] for n in node.input[1:4])
        elif node.op_type == ops.SPIKE_COUNT:
            rate = next(n for n in snn.graph.node if n.op_type == "Mul" and n.input[0] == node.output[0])
            result[source] = (inits[node.input[1]], inits[rate.input[1]] * steps, inits[node.input[2]])
    return result


def da_qcfs_ann(ann: onnx.ModelProto, params: dict, steps: int) -> onnx.ModelProto:
    """The ANN with every Relu replaced by (θ+φ)/T·clip(floor(((x+ψ)·T + θ/2)/θ), 0, T)."""
    model = onnx.ModelProto()
    model.CopyFrom(ann)
    nodes = []
    for node in model.graph.node:
        if node.op_type != "Relu":
            nodes.append(node)
            continue
        theta_pre, theta_post, psi = params[node.name]
        x, y, p = node.input[0], node.output[0], node.name
        consts = {"pre": theta_pre, "post_over_t": theta_post / steps, "psi": psi, "t": np.float32(steps),
                  "half_pre": theta_pre / 2, "zero": np.float32(0)}
        for key, value in consts.items():
            value = np.asarray(value, np.float32)
            model.graph.initializer.append(onh.from_array(value.reshape(-1, 1, 1) if value.size > 1 else value, f"{p}.{key}"))
        nodes += [
            oh.make_node("Add", [x, f"{p}.psi"], [f"{p}.a"]),
            oh.make_node("Mul", [f"{p}.a", f"{p}.t"], [f"{p}.b"]),
            oh.make_node("Add", [f"{p}.b", f"{p}.half_pre"], [f"{p}.c"]),
            oh.make_node("Div", [f"{p}.c", f"{p}.pre"], [f"{p}.d"]),
            oh.make_node("Floor", [f"{p}.d"], [f"{p}.e"]),
            oh.make_node("Clip", [f"{p}.e", f"{p}.zero", f"{p}.t"], [f"{p}.k"]),
            oh.make_node("Mul", [f"{p}.k", f"{p}.post_over_t"], [y]),
        ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    logits = np.concatenate([session.run(None, {name: x[i:i + 500]})[0] for i in range(0, len(x), 500)])
    return float(np.mean(logits.argmax(1) == y))


@pytest.fixture(scope="module")
def setting():
    if not MODEL.is_file():
        pytest.fail(f"{MODEL} is missing: it is a committed model")
    calib = CalibrationData(load("fashion-mnist", "train")[0][:2000], "fashion-mnist:train[:2000]")
    return onnx.load(MODEL), calib, *load("fashion-mnist", "test")


@pytest.mark.parametrize("steps,fold", [(4, False), (4, True), (8, True), (16, True), (32, True)])
def test_snn_accuracy_equals_independent_da_qcfs_ann(setting, steps, fold):
    ann, calib, x, y = setting
    snn = compile_model(ann, CompileOptions(steps=steps, fold_time=fold, calibration_data=calib)).model
    params = _neuron_parameters(snn)
    assert len(params) == sum(n.op_type == "Relu" for n in ann.graph.node)
    reference = _accuracy(da_qcfs_ann(ann, params, steps), x, y)
    got = _accuracy(snn, x, y)
    assert abs(got - reference) <= 0.001, (got, reference)
    assert reference > 0.80  # a calibrated conversion, not a broken one
