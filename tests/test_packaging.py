"""Packaging: ONNX Runtime comes from exactly one extra, and snncc says so at import otherwise.

The onnxruntime and onnxruntime-gpu wheels install the same package; with both, the CUDA execution
provider can vanish (microsoft/onnxruntime#26996). So `pip install 'snncc[gpu]'` must bring
onnxruntime-gpu alone: the base package requires neither wheel, the `cpu` extra onnxruntime, the
`gpu` extra onnxruntime-gpu, and no other extra either of them. Checked on the metadata that
building this checkout's wheel gives (its Requires-Dist, read with importlib.metadata), since the
CUDA provider itself needs a GPU to load.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from snncc._ort_wheels import WHEELS, OnnxRuntimeWheelsWarning, check_onnxruntime_wheels, onnxruntime_distributions

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel_metadata(tmp_path_factory) -> metadata.Distribution:
    """The metadata of the wheel that this checkout builds (setuptools' PEP 517 hook, run on a copy,
    so that no build files land in the checkout)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "snncc", source / "snncc", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("metadata")
    hook = ("import sys; from setuptools import build_meta; "
            "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))")
    result = subprocess.run([sys.executable, "-c", hook, str(out)], cwd=source, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return metadata.Distribution.at(out / result.stdout.strip().splitlines()[-1])


def onnxruntime_wheels_of(requirements: list[Requirement], extra: str | None) -> set[str]:
    """The ONNX Runtime wheels among `requirements` that installing with `extra` (None: none) brings."""
    environment = {"extra": extra or ""}
    return {r.name for r in requirements if r.name in WHEELS and (r.marker is None or r.marker.evaluate(environment))}


def test_each_install_brings_exactly_one_onnxruntime_wheel(wheel_metadata):
    requirements = [Requirement(line) for line in wheel_metadata.requires or []]
    extras = set(wheel_metadata.metadata.get_all("Provides-Extra") or [])
    assert {"cpu", "gpu", "test"} <= extras
    assert onnxruntime_wheels_of(requirements, None) == set()  # the base package needs neither
    assert onnxruntime_wheels_of(requirements, "cpu") == {"onnxruntime"}
    assert onnxruntime_wheels_of(requirements, "gpu") == {"onnxruntime-gpu"}
    for extra in extras - {"cpu", "gpu"}:  # so that [gpu,test] and the like still bring one
        assert onnxruntime_wheels_of(requirements, extra) == set(), extra


def test_this_environment_has_one_onnxruntime_wheel():
    installed = onnxruntime_distributions()
    assert len(installed) == 1, f"ONNX Runtime wheels installed here: {installed}"
    assert metadata.version(installed[0])


def test_both_wheels_give_a_warning_that_says_what_to_do():
    with pytest.warns(OnnxRuntimeWheelsWarning) as caught:
        check_onnxruntime_wheels(["onnxruntime", "onnxruntime-gpu"])
    message = str(caught[0].message)
    assert "onnxruntime, onnxruntime-gpu" in message and "pip uninstall -y onnxruntime onnxruntime-gpu" in message
    assert "snncc[gpu]" in message and "CUDA" in message


def test_no_wheel_is_an_import_error_naming_both_extras():
    with pytest.raises(ImportError, match=r"needs ONNX Runtime.*snncc\[cpu\].*snncc\[gpu\]"):
        check_onnxruntime_wheels([], importable=False)


@pytest.mark.parametrize("installed, importable", [(["onnxruntime"], True), (["onnxruntime-gpu"], True), ([], True)])
def test_one_wheel_or_a_source_build_is_silent(installed, importable):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_onnxruntime_wheels(installed, importable=importable)


def test_importing_snncc_beside_a_second_wheel_warns(tmp_path):
    """A real import, with a second wheel's metadata on the path beside this environment's own."""
    present = onnxruntime_distributions()
    other = next(name for name in WHEELS if name not in present)
    info = tmp_path / f"{other.replace('-', '_')}-1.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {other}\nVersion: 1.0.0\n")
    result = subprocess.run([sys.executable, "-c", "import snncc"], capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert "OnnxRuntimeWheelsWarning" in result.stderr and "2 ONNX Runtime wheels are installed" in result.stderr
