"""The one-call Python API: `snncc.compile("model.onnx", T=4, calib=x)`.

Invariant: every problem with the caller's model, data or arguments is an SnnccError whose message
names Python arguments, never command-line flags; warnings about the data (a calibration set the
ANN cannot classify, 0–255 pixel values, fewer samples than asked for) are SnnccWarnings.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import onnx

from snncc.errors import SnnccError

ModelLike = str | os.PathLike | onnx.ModelProto
CalibLike = np.ndarray | str | os.PathLike | None


@dataclasses.dataclass
class Compiled:
    """A compiled SNN: `model` (an onnx.ModelProto), its neuron `layers` and, when calibration data
    were given, `calibration_check` (what the ANN makes of them)."""

    model: onnx.ModelProto
    layers: list  # compiler.LayerSummary, one per neuron layer
    calibration_check: str | None = None
    _session: object = dataclasses.field(default=None, repr=False)

    @property
    def summary(self) -> str:
        """The neuron-layer table that `snncc compile` prints, with the calibration check."""
        from snncc.report import layer_table, model_line

        meta = {p.key: p.value for p in self.model.metadata_props}
        lines = [model_line(meta)] + ([self.calibration_check] if self.calibration_check else [])
        return "\n".join(lines + [layer_table(self.layers)])

    def save(self, path: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write the model to `path` atomically; an existing file only with overwrite=True."""
        from snncc.modelio import check_output_file, save_model

        path = Path(path)
        check_output_file(path, overwrite, "pass overwrite=True to replace it")
        save_model(self.model, path)
        return path

    def run(self, x) -> np.ndarray:
        """The SNN's first output (the T-mean logits) for the inputs `x` (any float dtype, in the
        model's input layout), on ONNX Runtime with the native `snn` kernels when present."""
        from snncc.data import check_inputs
        from snncc.evaluate import check_input
        from snncc.session import make_session

        x = check_inputs(np.asarray(x), "input")
        if self._session is None:
            self._session = make_session(self.model)
        check_input(self._session, x, "input")
        return self._session.run(None, {self._session.get_inputs()[0].name: x})[0]


def _load(model: ModelLike) -> tuple[onnx.ModelProto, str]:
    from snncc.modelio import load_model

    if isinstance(model, onnx.ModelProto):
        return model, "model"
    if isinstance(model, (str, os.PathLike)):
        return load_model(model), str(model)
    raise SnnccError(f"model: expected a path to an .onnx file or an onnx.ModelProto, got {type(model).__name__}")


def _calibration_data(calib: CalibLike, labels, model: onnx.ModelProto, source: str, samples: int | None,
                      preprocess: str | None):
    from snncc.calibration.dataset import calibration_from_array, load_calibration_data
    from snncc.modelio import model_input_shape

    shape = model_input_shape(model, source)
    if isinstance(calib, (str, os.PathLike)):
        if labels is not None:
            raise SnnccError("calib_labels go with an array calib; a file or dataset brings its own labels")
        return load_calibration_data(str(calib), shape, samples, preprocess)
    if preprocess:
        raise SnnccError("preprocess applies to image folders; calib is an array")
    if not isinstance(calib, np.ndarray):
        raise SnnccError(f"calib: expected a numpy array, a path or a dataset name such as 'fashion-mnist:train', "
                         f"got {type(calib).__name__}")
    return calibration_from_array(calib, shape, labels, f"array {list(calib.shape)} {calib.dtype}", samples)


def compile(model: ModelLike, T: int, calib: CalibLike = None, *, calib_labels=None, calib_samples: int | None = None,
            preprocess: str | None = None, levels: int | None = None, threshold: str = "max",
            calibrate: bool | None = None, fold_time: bool = False, neuron: str = "parallel",
            check_calib: bool = True) -> Compiled:
    """Compile an ANN (a path to an .onnx file, or an onnx.ModelProto) into a parallel-spiking SNN
    with `T` time-steps; returns a `Compiled` (`.model`, `.summary`, `.save(path)`, `.run(x)`).

    calib: calibration data, needed for ReLU/Clip models (thresholds, then DA-QCFS calibration) and
        optional for QCFS models at T ≠ T̃: a numpy array in the model's input layout (any float dtype),
        a .npy / .npz file (array x, optional labels y), an image folder, or a dataset such as
        'fashion-mnist:train'. calib_labels: labels for an array (for the calibration check).
        calib_samples: use the first N samples. preprocess: for image folders,
        e.g. 'resize=28' (resize, crop, mean, std; pixels are scaled to [0, 1] first).
    levels: T̃ of a QCFS model (default: read from the graph). threshold: 'max', a percentile such
        as 'p99.9', or 'mse'. calibrate: DA-QCFS calibration on/off (default: on for ReLU/Clip
        models, off for QCFS). fold_time: synaptic layers run once on rates. neuron: 'parallel' or
        'if' (the serial integrate-and-fire baseline). check_calib: run the ANN on the calibration
        data first and warn (SnnccWarning) when its predictions are near chance.

    Raises SnnccError for a bad model, data or argument.
    """
    from snncc.calibration.pipeline import CalibrationOptions
    from snncc.calibration.sanity import check_calibration
    from snncc.calibration.thresholds import ThresholdMode
    from snncc.compiler import CompileOptions, compile_model

    onnx_model, source = _load(model)
    if calib is None and (calib_labels is not None or calib_samples is not None or preprocess):
        raise SnnccError("calib_labels, calib_samples and preprocess apply to calibration data, and calib is None")
    if not isinstance(T, (int, np.integer)) or isinstance(T, bool):
        raise SnnccError(f"T must be an integer, got {T!r}")
    data = None if calib is None else _calibration_data(calib, calib_labels, onnx_model, source, calib_samples, preprocess)
    check = check_calibration(onnx_model, data) if data is not None and check_calib else None
    options = CompileOptions(steps=T, levels=levels, source=source, calibration_data=data, fold_time=fold_time,
                             neuron=neuron, calibration=CalibrationOptions(threshold=ThresholdMode.parse(threshold), da_qcfs=calibrate))
    result = compile_model(onnx_model, options)
    return Compiled(result.model, result.layers, None if check is None else check.summary)
