"""`snncc view`: a compiled model served through Netron renders its ParallelSpike nodes in a
headless Chromium (driven over the DevTools protocol on a pipe; no extra Python packages).

`make test` installs Chromium first where it is missing and the machine can (`make browser`: root
and apt-get), so the test runs wherever that works; it skips, saying why, only when netron or a
Chromium binary is missing. The screenshot is kept in the test's tmp dir (its path is printed),
never in the repository.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time

import onnx
import pytest

from snncc.compiler import CompileOptions, compile_model
from tests import nets

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1000",
                  # nothing but the local server resolves: Netron's page asks ipinfo.io and analytics hosts
                  "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"]


def chromium_binary() -> str | None:
    return next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome", "chrome")
                 if shutil.which(name)), None)


class DevTools:
    """Chromium with --remote-debugging-pipe: JSON commands on fd 3, replies on fd 4, NUL-separated."""

    def __init__(self, binary: str, profile: str):
        to_child, self._write = os.pipe()
        self._read, from_child = os.pipe()

        def wire_fds():  # in the child: the pipe ends become fds 3 and 4
            a = fcntl.fcntl(to_child, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_child, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.process = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                         "--remote-debugging-pipe", "about:blank"],
                                        preexec_fn=wire_fds, close_fds=False,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        self._buffer = b""
        self._id = 0
        self.session = None

    def send(self, method: str, params: dict | None = None, timeout: float = 60) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if self.session:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._read], [], [], left)[0]:
                    raise TimeoutError(f"no reply to {method} within {timeout}s")
                chunk = os.read(self._read, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def attach_to_page(self) -> None:
        page = next(t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.send("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True})["sessionId"]

    def evaluate(self, expression: str):
        return self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})["result"].get("value")

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        for fd in (self._read, self._write):
            os.close(fd)


def start_view(path, *args) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "snncc", "view", str(path), *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready = select.select([process.stdout], [], [], 60)[0]
    line = process.stdout.readline() if ready else ""
    if " at http://" not in line:
        process.kill()
        raise AssertionError(f"snncc view did not start: {line!r} {process.stderr.read()}")
    return process, line.split(" at ")[1].split()[0]


def test_view_shows_parallel_spike_nodes_in_netron(tmp_path):
    pytest.importorskip("netron", reason="netron is not installed (pip install 'snncc[view]')")
    binary = chromium_binary()
    if binary is None:
        pytest.skip("no Chromium binary, and `make browser` cannot install one on this machine (it needs root and "
                    "apt-get: apt-get install chromium): the Netron page was not rendered")
    model = compile_model(nets.export(nets.build("vgg", 4), dynamo=False), CompileOptions(steps=4)).model
    path = tmp_path / "vgg.snn.onnx"
    onnx.save(model, path)
    neurons = sum(n.op_type == "ParallelSpike" for n in model.graph.node)

    server, url = start_view(path, "--port", "0", "--no-browse")
    browser = DevTools(binary, str(tmp_path / "profile"))
    try:
        browser.attach_to_page()
        # Netron asks for cookie consent before it opens a model; a test run has nothing to consent to.
        browser.send("Network.enable")
        browser.send("Network.setCookie", {"name": "consent", "value": str(int(time.time() * 1000)), "url": url})
        browser.send("Page.enable")
        browser.send("Page.navigate", {"url": url})
        count, text = 0, ""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            state = browser.evaluate("[document.body.className, document.body.innerText, "
                                     "(document.getElementById('canvas') || document.body).textContent]") or ["", "", ""]
            text = state[1] or ""
            count = (state[2] or "").count("ParallelSpike")
            if count >= neurons or "Please update" in text:
                break
            time.sleep(0.5)
        screenshot = tmp_path / "netron.png"
        screenshot.write_bytes(base64.b64decode(browser.send("Page.captureScreenshot", {"format": "png"})["data"]))
        print(f"screenshot: {screenshot}")
        if "Please update" in text:
            pytest.skip("this netron build is older than 180 days and refuses to render: upgrade netron")
        assert count >= neurons, f"ParallelSpike shown {count} times, {neurons} expected; page text: {text[:300]!r}"
        assert screenshot.read_bytes().startswith(b"\x89PNG")
    finally:
        browser.close()
        server.send_signal(signal.SIGINT)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            raise AssertionError("snncc view did not stop within 60 s of Ctrl-C") from None
    assert server.returncode == 0, server.stderr.read()


def test_view_errors_are_one_line(tmp_path):
    pytest.importorskip("netron", reason="netron is not installed (pip install 'snncc[view]')")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    for target, needle in ((tmp_path / "missing.onnx", "no such file"), (tmp_path / "junk.onnx", "not a valid ONNX model")):
        result = subprocess.run([sys.executable, "-m", "snncc", "view", str(target), "--no-browse"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("snncc: error:") and needle in lines[0], result.stderr
