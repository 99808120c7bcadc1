"""Datasets for calibration and evaluation, read from the cache that `make data` fills.

Invariant: every loader returns ``x`` as float32 ``[N, 1, 28, 28]`` with values ``uint8 / 255``
in ``[0, 1]`` (no normalisation; models do their own) and ``y`` as int64 ``[N]`` with labels
0..9, in the file order of the original idx files. Nothing here downloads: a missing cache is an
:class:`~snncc.errors.SnnccError` that says to run ``make data``.

Arrays from files must hold floating-point inputs: integer pixels (0..255) and other dtypes are an
:class:`~snncc.errors.SnnccError`, as is an empty array. ``$SNNCC_MAX_SAMPLES`` (a positive
integer), when set, keeps the first N samples of every data set (quick tries; the README test).

Data larger than memory: `open_rows(spec)` gives a `RowSource` that reads any range of rows on
its own (a ``.npy`` file memory-mapped, an idx data set from its uint8 file, a Parquet file or a
folder of Parquet / .npy shard files only the files and row groups that hold the rows:
`snncc.shards`), with the same values as `load_spec`; scale-out actors read their shards with it.

Cache folder: ``$SNNCC_DATA_DIR`` if set, else ``<repo>/.cache/data``. Layout (written by
``scripts/fetch_data.sh``): ``<cache>/<dataset>/{train,t10k}-{images-idx3,labels-idx1}-ubyte``,
each either raw or gzip-compressed (``.gz``).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import os
import pathlib

import numpy as np

from snncc.errors import SnnccError

DATASETS = ("mnist", "fashion-mnist")
SPLITS = ("train", "test")
_PREFIX = {"train": "train", "test": "t10k"}
_REPO = pathlib.Path(__file__).resolve().parent.parent


def data_dir() -> pathlib.Path:
    """The cache folder: ``$SNNCC_DATA_DIR`` or ``<repo>/.cache/data``."""
    env = os.environ.get("SNNCC_DATA_DIR")
    return pathlib.Path(env) if env else _REPO / ".cache" / "data"


def max_samples() -> int | None:
    """``$SNNCC_MAX_SAMPLES`` as a positive integer, or None when unset."""
    text = os.environ.get("SNNCC_MAX_SAMPLES", "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) == 0:
        raise SnnccError(f"SNNCC_MAX_SAMPLES={text}: expected a positive integer")
    return int(text)


def limit_samples(x: np.ndarray) -> np.ndarray:
    """The first ``$SNNCC_MAX_SAMPLES`` rows of ``x`` (all of them when unset)."""
    limit = max_samples()
    return x if limit is None else x[:limit]


def check_inputs(x: np.ndarray, source: str) -> np.ndarray:
    """``x`` as float32, or SnnccError when it is empty or not floating point (0..255 integer pixels
    included: models want their own input scaling, which only the user knows)."""
    if x.dtype.kind not in "fiu":
        raise SnnccError(f"{source}: x has dtype {x.dtype}; expected floating-point model inputs")
    if x.dtype.kind in "iu":
        raise SnnccError(f"{source}: x has dtype {x.dtype} (integer pixels?); expected floating-point inputs in the "
                         "model's input layout and scale (the bundled models take pixels / 255 in [0, 1])")
    if x.ndim == 0 or len(x) == 0:
        raise SnnccError(f"{source}: x holds no samples (shape {list(x.shape)})")
    return np.asarray(x, dtype=np.float32)


def _find(folder: pathlib.Path, stem: str) -> pathlib.Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise SnnccError(f"dataset file {folder / stem}[.gz] not found; run `make data` to fetch the datasets")


def _read_idx(path: pathlib.Path, magic: int) -> np.ndarray:
    """Reads an idx file (big-endian header: magic, then one uint32 per dimension) as uint8."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise SnnccError(f"cannot read {path}: {e}; run `make data` to fetch it again") from e
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise SnnccError(f"{path} is not an idx file (magic {magic:#x}); run `make data` to fetch it again")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(shape)):
        raise SnnccError(f"{path} is truncated; run `make data` to fetch it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _labels(y: np.ndarray, spec: str) -> np.ndarray:
    if y.dtype.kind not in "iuf" or y.ndim != 1:
        raise SnnccError(f"{spec}: y has dtype {y.dtype} and shape {list(y.shape)}; expected one class index per input")
    return np.asarray(y, dtype=np.int64)


def load(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns (x float32 [N,1,28,28] in [0,1], y int64 [N]) for ``name`` in DATASETS, ``split`` in SPLITS."""
    images, labels = _load_pixels(name, split)
    return _scaled(images), labels


def _scaled(images: np.ndarray) -> np.ndarray:
    """uint8 [N, 28, 28] -> float32 [N, 1, 28, 28] in [0, 1]."""
    return (images.astype(np.float32) / np.float32(255.0))[:, None, :, :]


@functools.lru_cache(maxsize=2)
def _cached_pixels(name: str, split: str, folder: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    return _load_pixels(name, split)


def _load_pixels(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of a cached data set."""
    if name not in DATASETS:
        raise SnnccError(f"unknown dataset '{name}'; expected one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise SnnccError(f"unknown split '{split}' for {name}; expected one of {', '.join(SPLITS)}")
    folder = data_dir() / name
    prefix = _PREFIX[split]
    images = _read_idx(_find(folder, f"{prefix}-images-idx3-ubyte"), 0x00000803)
    labels = _read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte"), 0x00000801)
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise SnnccError(f"{folder}: {split} images {images.shape} do not match labels {labels.shape}")
    return images, labels.astype(np.int64)


def load_spec(spec: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Loads data named by ``spec``: ``"<dataset>:<split>"`` (e.g. ``fashion-mnist:test``),
    a ``.npz`` file with array ``x`` and optional ``y``, a ``.npy`` file holding ``x``, or a
    ``.parquet`` file or a folder of shard files (`snncc.shards`: column ``x``, optional ``label``).

    Returns (x, y or None), both cut to ``$SNNCC_MAX_SAMPLES`` rows when set. Arrays from files are
    returned as stored except that a floating-point ``x`` is cast to float32 (others are refused:
    `check_inputs`) and ``y`` to int64.
    """
    x, y = _load_spec(spec)
    return limit_samples(x), (None if y is None else limit_samples(y))


def _load_spec(spec: str) -> tuple[np.ndarray, np.ndarray | None]:
    from snncc import shards

    if shards.is_shards(spec):
        files = shards.open_shards(spec)
        return files.read(0, files.rows), files.labels()
    path = pathlib.Path(spec)
    suffix = path.suffix.lower()
    if suffix in (".npz", ".npy"):
        if not path.is_file():
            raise SnnccError(f"data file {spec} not found")
        try:
            loaded = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise SnnccError(f"cannot read data file {spec}: {e}") from e
        if suffix == ".npy":
            return check_inputs(loaded, f"data file {spec}"), None
        with loaded:
            if "x" not in loaded.files:
                raise SnnccError(f"{spec} has no array 'x' (found: {', '.join(loaded.files) or 'none'})")
            x = check_inputs(loaded["x"], f"data file {spec}")
            y = _labels(loaded["y"], spec) if "y" in loaded.files else None
        if y is not None and y.shape[0] != x.shape[0]:
            raise SnnccError(f"{spec}: x has {x.shape[0]} rows but y has {y.shape[0]}")
        return x, y
    return load(*_dataset_split(spec))


def _dataset_split(spec: str) -> tuple[str, str]:
    name, sep, split = spec.partition(":")
    if not sep or name not in DATASETS or split not in SPLITS:
        raise SnnccError(
            f"bad data spec '{spec}'; expected <dataset>:<split> with dataset in "
            f"{{{', '.join(DATASETS)}}} and split in {{{', '.join(SPLITS)}}}, or a .npz/.npy file"
        )
    return name, split


@dataclasses.dataclass(frozen=True)
class RowSource:
    """Rows of the data named by a spec, read range by range (picklable: actors open it again).
    `read(start, stop)` equals ``load_spec(spec)[0][start:stop]``; `rows` counts $SNNCC_MAX_SAMPLES."""

    spec: str
    rows: int

    def read(self, start: int, stop: int) -> np.ndarray:
        if not 0 <= start <= stop <= self.rows:
            raise IndexError(f"rows {start}:{stop} of {self.rows}")
        from snncc import shards

        if shards.is_shards(self.spec):
            return shards.open_shards(self.spec).read(start, stop)
        path = pathlib.Path(self.spec)
        if path.suffix.lower() == ".npy":
            return np.ascontiguousarray(memory_map(path)[start:stop], dtype=np.float32)  # dtype checked by open_rows
        if path.suffix.lower() == ".npz":
            return _cached_npz(self.spec)[0][start:stop]
        name, split = _dataset_split(self.spec)
        return _scaled(_cached_pixels(name, split, data_dir())[0][start:stop])

    def __getitem__(self, rows: np.ndarray) -> np.ndarray:
        """The rows at sorted indices `rows` (e.g. those an analysis looks at again)."""
        return np.concatenate([self.read(int(r), int(r) + 1) for r in rows])


def memory_map(path: pathlib.Path | str) -> np.ndarray:
    """A .npy file memory-mapped (read-only)."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise SnnccError(f"cannot read data file {path}: {e}") from e


@functools.lru_cache(maxsize=1)
def _cached_npz(spec: str) -> tuple[np.ndarray, np.ndarray | None]:
    return _load_spec(spec)


def open_rows(spec: str) -> tuple[RowSource, np.ndarray | None]:
    """A RowSource for ``spec`` and its labels (None when it has none), reading no inputs but the
    first row (checked as `load_spec` checks them); `.npy` files are memory-mapped, never loaded."""
    from snncc import shards

    path = pathlib.Path(spec)
    if shards.is_shards(spec):
        files = shards.open_shards(spec)
        check_inputs(files.read(0, min(1, files.rows)), f"data {spec}")
        count, y = files.rows, files.labels()
    elif path.suffix.lower() == ".npy":
        if not path.is_file():
            raise SnnccError(f"data file {spec} not found")
        x, y = memory_map(path), None
        check_inputs(np.asarray(x[:1] if x.ndim else x), f"data file {spec}")
        count = len(x)
    else:
        x, y = _cached_npz(spec) if path.suffix.lower() == ".npz" else _cached_pixels(*_dataset_split(spec), data_dir())
        count = len(x)
    limit = max_samples()
    rows = count if limit is None else min(limit, count)
    return RowSource(spec, rows), (None if y is None else y[:rows])
