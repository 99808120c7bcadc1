"""snncc: compile ANN ONNX models into parallel-spiking SNN ONNX models.

    import snncc
    snn = snncc.compile("model.onnx", T=4, calib=x)   # x: numpy array, file, folder or dataset name
    print(snn.summary); snn.save("model.snn.onnx"); logits = snn.run(x[:8])

`snncc.compile` and `snncc.Compiled` are in snncc.api (imported on first use); user errors are
`snncc.SnnccError`, warnings about the data `snncc.SnnccWarning`.
"""

from snncc._ort_wheels import check_onnxruntime_wheels

__version__ = "0.1.0"

check_onnxruntime_wheels()

from snncc.errors import SnnccError, SnnccWarning  # noqa: E402

__all__ = ["Compiled", "SnnccError", "SnnccWarning", "compile"]


def __getattr__(name: str):
    """`compile` and `Compiled` load the compiler (onnx, onnx-ir, ONNX Runtime) on first use only."""
    if name in ("compile", "Compiled"):
        from snncc import api

        return getattr(api, name)
    raise AttributeError(f"module 'snncc' has no attribute {name!r}")
