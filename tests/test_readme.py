"""README.md runs as written: every shell command and Python block, in order, on the bundled models.

Convention for everyone who edits README.md:
- Fenced ```sh, ```bash, ```console-less shell and ```python blocks are executed, in the order they
  appear, in one temporary folder that holds `models/` (a link to the bundled models). Later blocks
  may use what earlier ones wrote (copies of the models, calib.npz, compiled SNNs).
- A block whose fence follows a line `<!-- readme-test: skip -->` (blank lines in between are
  fine) is not executed: set-up and install steps (`make ...`, `pip install ...`), servers
  (`snncc view`), commands for other machines (e.g. a GPU). Use it sparingly.
- Blocks in any other language (```text, ```onnx, indented blocks) are never executed.
- Shell blocks run line by line (a line ending in `\\` continues on the next) with bash, `snncc`
  and `python` being this checkout's; each line must exit 0 and print no `snncc: warning:` (a
  README example that warns, e.g. about calibration data that do not fit the model, is wrong).
  Python blocks run as scripts with this checkout's snncc.
- The environment sets SNNCC_MAX_SAMPLES=200 (the README documents it): every --data and --calib
  set is cut to its first 200 samples, so that the whole README runs in a minute or two.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
SKIP_MARK = "<!-- readme-test: skip -->"
SHELLS = ("sh", "bash", "shell")
MAX_SAMPLES = "200"


def readme_blocks(text: str) -> list[tuple[int, str, str]]:
    """(line number, language, body) of every fenced block to execute, in order (see the convention)."""
    blocks, lines, i, skip = [], text.splitlines(), 0, False
    while i < len(lines):
        line = lines[i].strip()
        if line == SKIP_MARK:
            skip = True
        elif line.startswith("```"):
            language, start = line[3:].strip().lower(), i
            i += 1
            body = []
            while i < len(lines) and not lines[i].strip().startswith("```"):
                body.append(lines[i])
                i += 1
            if not skip and (language in SHELLS or language == "python"):
                blocks.append((start + 1, "python" if language == "python" else "sh", "\n".join(body)))
            skip = False
        elif line:
            skip = False
        i += 1
    return blocks


def shell_commands(body: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, blank and comment-only lines dropped."""
    commands, pending = [], ""
    for line in body.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        command = (pending + line).strip()
        pending = ""
        if command and not command.startswith("#"):
            commands.append(command)
    return commands


BLOCKS = readme_blocks(README.read_text())


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The folder the README runs in, and the environment: snncc/python of this checkout first on PATH."""
    root = tmp_path_factory.mktemp("readme")
    (root / "models").symlink_to(REPO / "models")
    bin_dir = root / ".bin"
    bin_dir.mkdir()
    (bin_dir / "snncc").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m snncc "$@"\n')
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "SNNCC_MAX_SAMPLES": MAX_SAMPLES, "MPLBACKEND": "Agg"}
    return root, env


def test_readme_has_runnable_blocks_and_mentions_the_sample_limit():
    text = README.read_text()
    assert "SNNCC_MAX_SAMPLES" in text
    languages = [language for _, language, _ in BLOCKS]
    assert "python" in languages and "sh" in languages
    assert any("snncc.compile(" in body for _, _, body in BLOCKS)


def test_blocks_are_found_by_the_convention():
    text = "\n".join(["```sh", "a", "```", SKIP_MARK, "", "```sh", "make x", "```", "```text", "b", "```",
                      "```python", "print(1)", "```"])
    assert [(language, body) for _, language, body in readme_blocks(text)] == [("sh", "a"), ("python", "print(1)")]
    assert shell_commands("# c\nsnncc a \\\n  --b  # d\n\nsnncc e") == ["snncc a    --b  # d", "snncc e"]


@pytest.mark.parametrize("line,language,body", BLOCKS, ids=[f"line{n}-{lang}" for n, lang, _ in BLOCKS])
def test_readme_block_runs(folder, line, language, body):
    """Blocks run in README order (pytest keeps the parametrisation order); each needs the ones before."""
    root, env = folder
    if language == "python":
        runs = [[sys.executable, "-c", body]]
    else:
        runs = [["bash", "-e", "-o", "pipefail", "-c", command] for command in shell_commands(body)]
    for run in runs:
        result = subprocess.run(run, cwd=root, env=env, capture_output=True, text=True, timeout=600)
        shown = run[-1] if language == "sh" else f"the Python block at README.md line {line}"
        assert result.returncode == 0, f"README.md line {line}: {shown} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        warnings = [w for w in result.stderr.splitlines() if w.startswith("snncc: warning:")]
        assert not warnings, f"README.md line {line}: {shown} warns:\n" + "\n".join(warnings)
