"""snncc.data: the loaders return float32 [N,1,28,28] in [0,1] and int64 labels 0..9.

Tests on the real datasets need `make data` (the cache); they are skipped without it. Tests on
tiny synthetic idx files and on .npz/.npy specs run everywhere.
"""

from __future__ import annotations

import gzip
import re
import struct

import numpy as np
import pytest

from snncc import data
from snncc.errors import SnnccError

SIZES = {"train": 60000, "test": 10000}


def _have(name: str) -> bool:
    try:
        data.load(name, "test")
    except SnnccError:
        return False
    return True


needs_cache = pytest.mark.skipif(
    not all(_have(n) for n in data.DATASETS), reason="dataset cache missing; run `make data`"
)


def _write_idx(path, array: np.ndarray, compress: bool) -> None:
    magic = 0x800 | array.ndim
    payload = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload += array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


@pytest.fixture
def fake_cache(tmp_path, monkeypatch):
    """A cache with a 5-image 'mnist' test split (raw idx) and 'fashion-mnist' (gzip idx)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    labels = np.array([0, 3, 9, 1, 7], dtype=np.uint8)
    for name, compress in (("mnist", False), ("fashion-mnist", True)):
        folder = tmp_path / name
        folder.mkdir()
        _write_idx(folder / "t10k-images-idx3-ubyte", images, compress)
        _write_idx(folder / "t10k-labels-idx1-ubyte", labels, compress)
    monkeypatch.setenv("SNNCC_DATA_DIR", str(tmp_path))
    return tmp_path, images, labels


@pytest.mark.parametrize("name", data.DATASETS)
def test_synthetic_idx_roundtrip(fake_cache, name):
    _, images, labels = fake_cache
    x, y = data.load(name, "test")
    assert x.shape == (5, 1, 28, 28) and x.dtype == np.float32
    assert y.dtype == np.int64
    np.testing.assert_array_equal(x[:, 0], images.astype(np.float32) / 255.0)
    np.testing.assert_array_equal(y, labels)
    assert x[0, 0, 0, 0] == 0.0 and x[0, 0, 0, 1] == 1.0
    assert x.flags.writeable


def test_missing_cache_says_make_data(tmp_path, monkeypatch):
    monkeypatch.setenv("SNNCC_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(SnnccError, match="make data"):
        data.load("fashion-mnist", "test")
    with pytest.raises(SnnccError, match="make data"):
        data.load_spec("mnist:train")


def test_missing_split_file(fake_cache):
    with pytest.raises(SnnccError, match="train-images-idx3-ubyte"):
        data.load("mnist", "train")


def test_truncated_idx_is_an_error(fake_cache):
    root, _, _ = fake_cache
    path = root / "mnist" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(SnnccError, match="truncated"):
        data.load("mnist", "test")


def test_wrong_magic_is_an_error(fake_cache):
    root, _, _ = fake_cache
    path = root / "mnist" / "t10k-labels-idx1-ubyte"
    path.write_bytes(b"\x00\x00\x09\x99" + path.read_bytes()[4:])
    with pytest.raises(SnnccError, match="not an idx file"):
        data.load("mnist", "test")


@pytest.mark.parametrize(
    "spec", ["cifar10:test", "mnist:val", "mnist", "fashion-mnist:", "", "data.csv"]
)
def test_bad_spec(spec):
    with pytest.raises(SnnccError):
        data.load_spec(spec)


def test_unknown_name_and_split():
    with pytest.raises(SnnccError, match="unknown dataset"):
        data.load("cifar10", "test")
    with pytest.raises(SnnccError, match="unknown split"):
        data.load("mnist", "validation")


def test_npz_spec_with_and_without_labels(tmp_path):
    x = np.random.default_rng(1).random((7, 1, 28, 28))  # float64 on purpose
    y = np.arange(7) % 10
    np.savez(tmp_path / "xy.npz", x=x, y=y.astype(np.int32))
    np.savez(tmp_path / "x.npz", x=x)
    gx, gy = data.load_spec(str(tmp_path / "xy.npz"))
    assert gx.dtype == np.float32 and gx.shape == x.shape
    np.testing.assert_allclose(gx, x, rtol=1e-6)
    assert gy.dtype == np.int64
    np.testing.assert_array_equal(gy, y)
    gx, gy = data.load_spec(str(tmp_path / "x.npz"))
    assert gy is None and gx.shape == x.shape


def test_npy_spec(tmp_path):
    x = np.zeros((3, 1, 28, 28), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    gx, gy = data.load_spec(str(tmp_path / "x.npy"))
    assert gy is None and gx.shape == (3, 1, 28, 28) and gx.dtype == np.float32


def test_npz_errors(tmp_path):
    with pytest.raises(SnnccError, match="not found"):
        data.load_spec(str(tmp_path / "absent.npz"))
    np.savez(tmp_path / "noxs.npz", images=np.zeros((2, 1, 28, 28)))
    with pytest.raises(SnnccError, match="no array 'x'"):
        data.load_spec(str(tmp_path / "noxs.npz"))
    np.savez(tmp_path / "mismatch.npz", x=np.zeros((2, 1, 28, 28)), y=np.zeros(3))
    with pytest.raises(SnnccError, match="rows"):
        data.load_spec(str(tmp_path / "mismatch.npz"))
    (tmp_path / "garbage.npz").write_bytes(b"not a zip")
    with pytest.raises(SnnccError, match="cannot read"):
        data.load_spec(str(tmp_path / "garbage.npz"))


@needs_cache
@pytest.mark.parametrize("name", data.DATASETS)
@pytest.mark.parametrize("split", data.SPLITS)
def test_real_dataset(name, split):
    x, y = data.load(name, split)
    n = SIZES[split]
    assert x.shape == (n, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64
    assert x.min() == 0.0 and x.max() == 1.0
    # Values are exactly k/255: the loader scales uint8 and does nothing else.
    k = x[:100] * 255.0
    np.testing.assert_allclose(k, np.round(k), atol=1e-4)
    assert y.min() == 0 and y.max() == 9
    counts = np.bincount(y, minlength=10)
    assert counts.min() > 0.08 * n and counts.max() < 0.12 * n
    if name == "fashion-mnist":
        assert (counts == n // 10).all()  # Fashion-MNIST is exactly balanced
    # Mean pixel intensity: MNIST ~0.13, Fashion-MNIST ~0.29.
    assert 0.1 < float(x.mean()) < 0.35


@needs_cache
def test_spec_matches_load():
    x1, y1 = data.load_spec("fashion-mnist:test")
    x2, y2 = data.load("fashion-mnist", "test")
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)


@needs_cache
def test_datasets_differ():
    xm, _ = data.load("mnist", "test")
    xf, _ = data.load("fashion-mnist", "test")
    assert not np.array_equal(xm[:10], xf[:10])


@pytest.mark.parametrize("x,needle", [
    (np.full((2, 1, 28, 28), 255, np.uint8), "dtype uint8 (integer pixels?)"),
    (np.array(["a", "b"]), "dtype <U1"),
    (np.zeros((0, 1, 28, 28), np.float32), "no samples"),
])
def test_file_inputs_must_be_floating_point_samples(tmp_path, x, needle):
    np.savez(tmp_path / "bad.npz", x=x)
    np.save(tmp_path / "bad.npy", x)
    for name in ("bad.npz", "bad.npy"):
        with pytest.raises(SnnccError, match=re.escape(needle)):
            data.load_spec(str(tmp_path / name))


def test_max_samples_cuts_every_data_set(tmp_path, monkeypatch, fake_cache):
    x = np.arange(5 * 4, dtype=np.float64).reshape(5, 1, 2, 2)
    np.savez(tmp_path / "xy.npz", x=x, y=np.arange(5))
    monkeypatch.setenv("SNNCC_MAX_SAMPLES", "3")
    gx, gy = data.load_spec(str(tmp_path / "xy.npz"))
    np.testing.assert_array_equal(gx, x[:3].astype(np.float32))
    np.testing.assert_array_equal(gy, [0, 1, 2])
    assert len(data.load_spec("mnist:test")[0]) == 3  # the fake cache holds 5
    monkeypatch.setenv("SNNCC_MAX_SAMPLES", "0")
    with pytest.raises(SnnccError, match="SNNCC_MAX_SAMPLES=0: expected a positive integer"):
        data.load_spec(str(tmp_path / "xy.npz"))
