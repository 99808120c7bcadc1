"""Does the calibration data fit the ANN? A quick look before thresholds are recorded on it.

Calibration data in the wrong scale or normalisation give a useless SNN without any error: the
thresholds are recorded faithfully on activations that mean nothing. This module runs the ANN on
(the first `CHECK_SAMPLES` of) the calibration data and reports its accuracy when labels are
known, else the spread of its predictions, and flags inputs that look like 0–255 pixel values.

Invariant: `check_calibration` never changes the data or the model; it returns the summary line
and the warnings (near-chance accuracy, predictions collapsed onto one class, 0–255 floats), and
issues each warning as an SnnccWarning.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import onnx

from snncc.calibration.dataset import CalibrationData
from snncc.errors import SnnccWarning

CHECK_SAMPLES = 1024
NEAR_CHANCE = 2.0  # accuracy below this multiple of chance is "near chance"
COLLAPSED = 0.6  # one class predicted for more than this fraction of the inputs


@dataclasses.dataclass(frozen=True)
class CalibrationCheck:
    summary: str  # one line: what the ANN makes of the calibration data
    warnings: list[str]  # also issued as SnnccWarning


def looks_like_byte_pixels(x: np.ndarray) -> bool:
    """Floats that are whole numbers reaching past 2 and up to 255: pixel values not divided by 255."""
    sample = np.asarray(x[:CHECK_SAMPLES], dtype=np.float32)
    high = float(sample.max()) if sample.size else 0.0
    return 2.0 < high <= 255.0 and float(np.mean(sample == np.round(sample))) > 0.99


def check_calibration(model: onnx.ModelProto, data: CalibrationData) -> CalibrationCheck | None:
    """The ANN's accuracy (labels known) or prediction spread on the calibration data, with warnings;
    None when the model's first output is not [batch, classes] with at least two classes."""
    from snncc.evaluate import predict
    from snncc.session import make_session

    session = make_session(model, native=False)
    x = np.ascontiguousarray(data.x[:CHECK_SAMPLES], dtype=np.float32)
    logits = predict(session, x, 256, "checking the calibration data")
    if logits.ndim != 2 or logits.shape[1] < 2:
        return None
    classes = logits.shape[1]
    predicted = logits.argmax(axis=1)
    counts = np.bincount(predicted, minlength=classes)
    top = int(counts.argmax())
    share = counts[top] / len(predicted)
    where = f"the first {len(x)} calibration samples" if len(x) < len(data.x) else f"the {len(x)} calibration samples"
    found = []
    if looks_like_byte_pixels(data.x):
        found.append(f"calibration data {data.source}: whole-number floats up to {float(x.max()):.0f} look like "
                        "0-255 pixel values; if the model takes pixels / 255 (the bundled models do), divide by 255")
    y = None if data.y is None else data.y[:len(x)]
    if y is not None and len(y) == len(x) and y.min() >= 0 and y.max() < classes:
        accuracy = float(np.mean(predicted == y))
        chance = float(np.bincount(y, minlength=classes).max() / len(y))
        summary = (f"calibration check: the ANN is {100 * accuracy:.1f}% accurate on {where} "
                   f"(chance {100 * chance:.1f}%)")
        if accuracy < NEAR_CHANCE * chance:
            found.append(f"calibration data {data.source}: the ANN is {100 * accuracy:.1f}% accurate on it, near "
                            f"chance ({100 * chance:.1f}%): the data probably do not match the model's input "
                            "(scale, normalisation, layout); the SNN will be no better")
    else:
        summary = (f"calibration check: the ANN predicts {int(np.count_nonzero(counts))} of {classes} classes on "
                   f"{where}; the most frequent, class {top}, for {100 * share:.1f}%")
    if share > COLLAPSED and classes > 2:
        found.append(f"calibration data {data.source}: the ANN predicts class {top} for {100 * share:.1f}% of it: "
                        "the data probably do not match the model's input (scale, normalisation, layout)")
    for text in found:
        warnings.warn(text, SnnccWarning, stacklevel=2)
    return CalibrationCheck(summary, found)
