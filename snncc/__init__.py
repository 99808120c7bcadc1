"""snncc: compile ANN ONNX models into parallel-spiking SNN ONNX models."""

from snncc._ort_wheels import check_onnxruntime_wheels

__version__ = "0.1.0"

check_onnxruntime_wheels()
