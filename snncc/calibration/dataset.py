"""Calibration data: arrays or image folders, validated before any work is done.

Invariant: a CalibrationData holds at least one sample, float32, in the model's input layout,
with only finite values (labels, when the source has them, one per sample); its summary names the
source, the sample count and a hash of the data. Sample limits that the data cannot meet are
reported as SnnccWarning, never ignored silently.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path

import warnings

import numpy as np

from snncc import data as datasets
from snncc.errors import SnnccError, SnnccWarning

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How image files become model inputs: resize the shorter side, centre-crop, scale to [0, 1],
    then (x - mean) / std per channel."""

    resize: int | None = None
    crop: int | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    @classmethod
    def parse(cls, spec: str | None) -> Preprocess:
        """'resize=32,crop=28,mean=0.5,std=0.25' (mean/std may list one value per channel with '/')."""
        if not spec:
            return cls()
        fields: dict = {}
        for item in spec.split(","):
            key, sep, value = item.partition("=")
            key = key.strip()
            try:
                if not sep or key not in ("resize", "crop", "mean", "std"):
                    raise ValueError
                if key in ("resize", "crop"):
                    fields[key] = int(value)
                else:
                    fields[key] = tuple(float(v) for v in value.split("/"))
            except ValueError:
                raise SnnccError(f"bad preprocessing item '{item}'; expected resize=N, crop=N, mean=a[/b/c], std=a[/b/c]") from None
        if any(s <= 0 for s in fields.get("std", (1.0,))):
            raise SnnccError("preprocessing std values must be positive")
        return cls(**fields)


@dataclasses.dataclass
class CalibrationData:
    x: np.ndarray
    source: str
    y: np.ndarray | None = None  # class labels, when the source has them (for the sanity check)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self.x), batch_size):
            yield np.ascontiguousarray(self.x[start:start + batch_size], dtype=np.float32)

    def run(self, proto, names: list[str], batch_size: int, label: str) -> Iterator[list[np.ndarray]]:
        """The outputs `names` of the model `proto` (stock ops, one input) for each batch, in order."""
        from snncc.progress import progress
        from snncc.session import make_session

        session = make_session(proto, native=False, spinning=False)
        input_name = session.get_inputs()[0].name
        for batch in progress(list(self.batches(batch_size)), label):
            yield session.run(names, {input_name: batch})

    def digest(self) -> str:
        h = hashlib.sha256()
        for batch in self.batches(4096):
            h.update(batch.tobytes())
        return h.hexdigest()[:16]

    def summary(self) -> dict:
        return {"source": self.source, "samples": int(len(self.x)), "shape": list(self.x.shape[1:]), "sha256": self.digest()}


def load_calibration_data(spec: str, input_shape: list, samples: int | None = None,
                          preprocess: str | None = None) -> CalibrationData:
    """Read `spec` (dataset:split, .npy, .npz with array x [and y], or an image folder) and validate
    it. `samples` keeps the first N samples; `preprocess` applies to image folders only."""
    _check_sample_count(samples)
    path = Path(spec)
    if preprocess and not path.is_dir():
        raise SnnccError(f"calibration data {spec}: preprocessing applies to image folders only; "
                         "arrays and datasets are used as they are")
    y = None
    if path.is_dir():
        x = _read_images(path, input_shape, Preprocess.parse(preprocess), samples)
    elif path.suffix.lower() in (".npy", ".npz"):
        x, y = _read_array(path)
    elif ":" in spec and not path.exists():
        x, y = datasets.load_spec(spec)
    else:
        raise SnnccError(f"calibration data {spec}: not found (expected a .npy/.npz file, an image folder, or dataset:split)")
    return _limited(x, y, spec, input_shape, samples)


def calibration_from_array(x, input_shape: list | None = None, y=None, source: str = "array",
                           samples: int | None = None) -> CalibrationData:
    """Calibration data from an array in the model's input layout (any float dtype; cast to float32),
    with optional labels, its first `samples` rows; validated as `load_calibration_data` validates files."""
    _check_sample_count(samples)
    x = np.asarray(x)
    if x.ndim == 0:
        raise SnnccError(f"calibration data {source}: one value, expected an array of samples")
    if x.dtype.kind == "f":
        x = x.astype(np.float32, copy=False)
    if y is not None:
        y = np.asarray(y)
        if y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iu":
            raise SnnccError(f"calibration labels: {list(y.shape)} {y.dtype}, expected {len(x)} integer class indices")
    shape = input_shape if input_shape is not None else [None, *x.shape[1:]]
    return _limited(x, y, source, shape, samples)


def _check_sample_count(samples: int | None) -> None:
    if samples is not None and samples <= 0:
        raise SnnccError(f"the calibration sample count must be positive, got {samples}")


def _limited(x: np.ndarray, y: np.ndarray | None, spec: str, input_shape: list, samples: int | None) -> CalibrationData:
    cap = datasets.max_samples()
    limit = min(n for n in (samples, cap, len(x)) if n is not None)
    if samples is not None and samples > len(x) and (cap is None or len(x) < cap) and not Path(spec).is_dir():
        warnings.warn(f"calibration data {spec}: {samples} samples asked for, it holds {len(x)}: using {len(x)}",
                      SnnccWarning, stacklevel=2)
    x, y = x[:limit], (None if y is None else y[:limit])
    _validate(x, input_shape, spec)
    return CalibrationData(x, spec, None if y is None else np.asarray(y, dtype=np.int64))


def _read_array(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    if not path.is_file():
        raise SnnccError(f"calibration data {path}: no such file")
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False), None
        with np.load(path, allow_pickle=False) as archive:
            if "x" not in archive.files:
                raise SnnccError(f"calibration data {path}: no array 'x' (found: {', '.join(archive.files) or 'none'})")
            x = archive["x"]
            y = archive["y"] if "y" in archive.files else None
    except (OSError, ValueError) as error:
        raise SnnccError(f"calibration data {path}: cannot read ({error})") from None
    if y is not None and (y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "iuf"):
        y = None  # not labels this check can use; the inputs stand on their own
    return x, y


def _validate(x: np.ndarray, input_shape: list, source: str) -> None:
    if x.dtype.kind != "f":
        raise SnnccError(f"calibration data {source}: dtype {x.dtype}, expected floating point in the model's input layout "
                         "(scale integer images yourself, or calibrate on an image folder)")
    if x.ndim == 0 or len(x) == 0:
        raise SnnccError(f"calibration data {source}: empty")
    expected = list(input_shape[1:])
    if x.ndim != len(input_shape) or any(isinstance(d, int) and d != n for d, n in zip(expected, x.shape[1:])):
        raise SnnccError(f"calibration data {source}: samples of shape {list(x.shape[1:])}, the model input wants {expected}")
    for start in range(0, len(x), 4096):
        if not np.isfinite(x[start:start + 4096]).all():
            raise SnnccError(f"calibration data {source}: contains NaN or infinite values")


def _read_images(folder: Path, input_shape: list, prep: Preprocess, samples: int | None) -> np.ndarray:
    from PIL import Image

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    cap = datasets.max_samples()
    if samples is not None and samples > len(files) and (cap is None or len(files) < cap):
        warnings.warn(f"calibration data {folder}: {samples} samples asked for, it holds {len(files)} images: "
                      f"using {len(files)}", SnnccWarning, stacklevel=3)
    files = files[:min(n for n in (samples, cap, len(files)) if n is not None)]
    if not files:
        raise SnnccError(f"calibration data {folder}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    if len(input_shape) != 4 or not all(isinstance(d, int) for d in input_shape[1:]):
        raise SnnccError(f"calibration images need a model input [N, C, H, W] with static C, H, W; it has {input_shape}")
    channels, height, width = input_shape[1:]
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise SnnccError(f"calibration images: the model input has {channels} channels; images give 1 or 3")
    mean = np.asarray(prep.mean, np.float32).reshape(-1, 1, 1)
    std = np.asarray(prep.std, np.float32).reshape(-1, 1, 1)
    out = np.empty((len(files), channels, height, width), np.float32)
    for i, file in enumerate(files):
        try:
            image = Image.open(file).convert(mode)
        except OSError as error:
            raise SnnccError(f"calibration image {file}: cannot read ({error})") from None
        image = _resize_and_crop(image, prep)
        if image.size != (width, height):
            raise SnnccError(f"calibration image {file}: {image.size[0]}x{image.size[1]} after preprocessing, the model wants {width}x{height}")
        pixels = np.asarray(image, np.float32).reshape(height, width, channels).transpose(2, 0, 1) / 255.0
        out[i] = (pixels - mean) / std
    return out


def _resize_and_crop(image, prep: Preprocess):
    from PIL import Image

    if prep.resize:
        scale = prep.resize / min(image.size)
        image = image.resize((max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale))), Image.BILINEAR)
    if prep.crop:
        left = (image.size[0] - prep.crop) // 2
        top = (image.size[1] - prep.crop) // 2
        image = image.crop((left, top, left + prep.crop, top + prep.crop))
    return image
