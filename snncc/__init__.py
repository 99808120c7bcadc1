"""snncc: compile ANN ONNX models into parallel-spiking SNN ONNX models."""

__version__ = "0.1.0"
