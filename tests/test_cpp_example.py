"""examples/cpp (snn_classify): builds it and checks its classes against Python's onnxruntime.

The model is a tiny compiled-style SNN built inline: Tile (direct encoding, time-major) -> Conv ->
snn.ParallelSpike -> GlobalAveragePool -> Flatten -> Gemm -> Reshape [T, B, K] -> ReduceMean (T-mean).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnxruntime
import pytest

from snncc.cpu_layout import prepare_for_cpu
from snncc.ops import DOMAIN, TARGET_OPSET, function_library
from snncc.session import make_session, native_library_path

REPO = Path(__file__).resolve().parent.parent
HEADERS = Path(os.environ.get("ORT_INCLUDE_DIR") or REPO / "runtime/build/ort/usr/include/onnxruntime")
STEPS, CLASSES, CHANNELS = 4, 5, 6

pytestmark = [
    pytest.mark.skipif(native_library_path() is None, reason="native library not built (run `make native`)"),
    pytest.mark.skipif(
        not (HEADERS / "onnxruntime_cxx_api.h").is_file(), reason=f"no ONNX Runtime headers in {HEADERS}"
    ),
    pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not found"),
]


def tiny_snn() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = {
        "repeats": np.array([STEPS, 1, 1, 1], np.int64),
        "conv_w": rng.normal(0, 0.5, (CHANNELS, 1, 3, 3)),
        "conv_b": rng.normal(0.2, 0.1, CHANNELS),
        "theta_pre": rng.uniform(0.5, 1.5, (CHANNELS, 1, 1)),
        "theta_post": rng.uniform(0.5, 1.5, (CHANNELS, 1, 1)),
        "psi": rng.uniform(-0.1, 0.1, (CHANNELS, 1, 1)),
        "fc_w": rng.normal(0, 1, (CLASSES, CHANNELS)),
        "fc_b": rng.normal(0, 0.1, CLASSES),
        "by_step": np.array([STEPS, -1, CLASSES], np.int64),
        "time_axis": np.array([0], np.int64),
    }
    nodes = [
        oh.make_node("Tile", ["x", "repeats"], ["x_t"]),
        oh.make_node("Conv", ["x_t", "conv_w", "conv_b"], ["current"], pads=[1, 1, 1, 1]),
        oh.make_node(
            "ParallelSpike", ["current", "theta_pre", "theta_post", "psi"], ["spikes"], domain=DOMAIN, T=STEPS
        ),
        oh.make_node("GlobalAveragePool", ["spikes"], ["pooled"]),
        oh.make_node("Flatten", ["pooled"], ["flat"]),
        oh.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["scores_t"], transB=1),
        oh.make_node("Reshape", ["scores_t", "by_step"], ["scores_by_step"]),
        oh.make_node("ReduceMean", ["scores_by_step", "time_axis"], ["logits"], keepdims=0),
    ]
    graph = oh.make_graph(
        nodes,
        "tiny_snn",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [oh.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=[onh.from_array(v if v.dtype == np.int64 else v.astype(np.float32), k) for k, v in inits.items()],
    )
    opsets = [oh.make_opsetid("", TARGET_OPSET), oh.make_opsetid(DOMAIN, 1)]
    model = oh.make_model(graph, opset_imports=opsets, functions=function_library())
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def snn_classify(tmp_path_factory) -> Path:
    """The example, configured and built from scratch against the onnxruntime wheel's library."""
    capi = Path(onnxruntime.__file__).parent / "capi"
    library = sorted(capi.glob("libonnxruntime.so.1*"))
    if not library:
        pytest.skip(f"no libonnxruntime.so.1* in {capi}")
    build = tmp_path_factory.mktemp("snn_classify")
    subprocess.run(["cmake", "-S", str(REPO / "examples/cpp"), "-B", str(build), f"-DORT_INCLUDE_DIR={HEADERS}",
                    f"-DORT_LIBRARY={library[-1]}"], check=True, capture_output=True)
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True)
    return build / "snn_classify"


def classify(program: Path, *args: str) -> list[int]:
    result = subprocess.run([str(program), *args], check=True, capture_output=True, text=True)
    return [int(line) for line in result.stdout.split()]


def test_cpp_example_matches_python(snn_classify, tmp_path):
    model = tiny_snn()
    model_path = tmp_path / "tiny.snn.onnx"
    onnx.save(model, model_path)
    x = np.random.default_rng(1).normal(0.5, 1.0, (32, 1, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    x.tofile(tmp_path / "x.f32")

    native = make_session(model, native=True, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    function = make_session(model, native=False, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    expected = native.argmax(axis=1).tolist()
    assert function.argmax(axis=1).tolist() == expected
    assert len(set(expected)) > 1, "a degenerate model: every input gets one class"

    library = str(native_library_path())
    assert classify(snn_classify, "--library", library, str(model_path), str(tmp_path / "x.npy")) == expected
    raw = str(tmp_path / "x.f32")
    assert classify(snn_classify, "--library", library, "--threads", "1", str(model_path), raw) == expected
    assert classify(snn_classify, str(model_path), str(tmp_path / "x.npy")) == expected  # the ONNX functions
    # Prepared for this machine's CPU provider (neurons in NCHWc), as `snncc prepare-cpu` writes it.
    prepared_path = tmp_path / "tiny.snn.cpu.onnx"
    onnx.save(prepare_for_cpu(model, native_library_path()), prepared_path)
    assert classify(snn_classify, "--library", library, str(prepared_path), str(tmp_path / "x.npy")) == expected


def test_cpp_example_reports_bad_input(snn_classify, tmp_path):
    model_path = tmp_path / "tiny.snn.onnx"
    onnx.save(tiny_snn(), model_path)
    (tmp_path / "bad.f32").write_bytes(b"\0" * 10)  # not a whole number of 8x8 float32 rows
    command = [str(snn_classify), str(model_path), str(tmp_path / "bad.f32")]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 1
    assert "whole number" in result.stderr
