"""`snncc view`: show an ONNX model (ANN or compiled SNN) in Netron, served on localhost.

Netron (the `netron` PyPI package, extra `snncc[view]`) serves its web app and the model file
from a local HTTP server; a browser renders the graph. `snn.ParallelSpike` and the other `snn` ops
are model-local functions, so Netron shows them as nodes whose body can be opened.

Invariant: `serve` validates the file as an ONNX model before serving it, and every failure
(netron missing, unreadable model, port taken) is an SnnccError.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

from snncc.errors import SnnccError


def _netron():
    try:
        import netron
    except ImportError:
        raise SnnccError("netron is not installed: pip install 'snncc[view]' (or pip install netron)") from None
    return netron


def serve(path: Path, host: str = "127.0.0.1", port: int | None = None, browse: bool = True) -> str:
    """Start serving `path` in Netron (in a background thread); returns the URL."""
    from snncc.modelio import load_model

    netron = _netron()
    load_model(path)  # one clear error for a missing or invalid file, before the server starts
    logging.getLogger("netron").setLevel(logging.WARNING)  # we print the URL ourselves
    # Browsers open idle "preconnect" sockets; the thread serving one must not keep the process
    # alive after Ctrl-C (netron's threaded server leaves its request threads non-daemon).
    server_class = getattr(getattr(netron, "server", None), "_ThreadedHTTPServer", None)
    if server_class is not None:
        server_class.daemon_threads = True
    try:
        address = netron.start(str(path), address=(host, port), browse=browse)
    except OSError as error:
        raise SnnccError(f"cannot serve on {host}:{port}: {error.strerror or error}") from None
    except ValueError as error:
        raise SnnccError(f"cannot serve on {host}:{port}: {error}") from None
    return f"http://{address[0]}:{address[1]}"


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def wait() -> None:
    """Block until Ctrl-C (or SIGTERM), then stop the server. The handlers are installed here
    because a process started in the background by a non-interactive shell inherits SIGINT as
    ignored, and Python then leaves it ignored."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    _netron().wait()
