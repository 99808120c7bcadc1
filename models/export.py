"""Export a checkpoint written by models/train.py to ONNX and check it against torch.

The export is in eval mode, with input "input" [batch, 1, 28, 28] (batch dynamic) and output
"logits" [batch, 10]. After writing, the model is checked with onnx.checker and run on ONNX
Runtime; its logits must match torch's on random and real inputs, else the script fails.

    .venv/bin/python models/export.py .cache/models/fmnist_qcfs_vgg_t4.pt \
        -o models/fmnist_qcfs_vgg_t4.onnx --no-dynamo --opset 17
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import version_converter

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from models.qcfs import build  # noqa: E402


def load_checkpoint(path: pathlib.Path) -> tuple[torch.nn.Module, dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cfg = ckpt["config"]
    model = build(cfg["act"], cfg["levels"], cfg["theta"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt


def _opset(proto: onnx.ModelProto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _down_convert(proto: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """onnx's version converter, plus a fix for the attribute it leaves behind.

    Converting Reduce* from opset 18 moves ``axes`` back to an attribute but keeps
    ``noop_with_empty_axes`` (new in 18), which the checker rejects; at its default 0 it is dropped.
    """
    converted = version_converter.convert_version(proto, opset)
    if opset < 18:
        for node in converted.graph.node:
            if not node.op_type.startswith("Reduce"):
                continue
            keep = [a for a in node.attribute if a.name != "noop_with_empty_axes"]
            dropped = [a for a in node.attribute if a.name == "noop_with_empty_axes"]
            if any(a.i != 0 for a in dropped):
                raise SystemExit(f"node {node.name}: noop_with_empty_axes=1 has no opset {opset} form")
            del node.attribute[:]
            node.attribute.extend(keep)
    return converted


def export(model: torch.nn.Module, out: pathlib.Path, opset: int, dynamo: bool) -> onnx.ModelProto:
    """Exports ``model`` (eval mode) to ``out`` atomically and returns the loaded ModelProto."""
    model.eval()
    example = (torch.rand(2, 1, 28, 28),)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=out.parent)
    os.close(fd)
    try:
        if dynamo:
            # The dynamo exporter emits opset >= 18 and its in-process down-conversion fails on
            # ReduceMean (axes input -> attribute); converting the saved model works.
            batch = torch.export.Dim("batch")
            program = torch.onnx.export(
                model, example, dynamo=True, opset_version=max(opset, 18), input_names=["input"],
                output_names=["logits"], dynamic_shapes=({0: batch},), external_data=False,
            )
            program.save(tmp, external_data=False)
            proto = onnx.load(tmp)
            if _opset(proto) != opset:
                onnx.save(_down_convert(proto, opset), tmp)
        else:
            torch.onnx.export(
                model, example, tmp, dynamo=False, opset_version=opset, input_names=["input"],
                output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                do_constant_folding=True,
            )
        proto = onnx.load(tmp)
        if _opset(proto) != opset:
            raise SystemExit(f"exporter produced opset {_opset(proto)}, not the requested {opset}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return proto


def check(model: torch.nn.Module, path: pathlib.Path, x: np.ndarray, atol: float = 1e-4):
    """Runs ``path`` on ONNX Runtime and torch on ``x``.

    Returns (max abs logit difference, rows that differ by more than ``atol``, argmax agreement).

    QCFS floors its input, and the exporter folds BatchNorm into the Conv weights, so a
    pre-activation within float rounding of a level boundary can land on a different level in
    the two runtimes and shift that row's logits by a multiple of θ/T̃ times a weight. Up to 5% of
    rows may differ this way, provided the argmax agrees on at least 99% of rows; every other
    row must match to ``atol``. (A ReLU model matches on every row.)
    """
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input": x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    if got.shape != want.shape:
        raise SystemExit(f"shape mismatch: onnx {got.shape} vs torch {want.shape}")
    diff = np.abs(got - want).max(axis=1)
    bad = diff > atol
    agree = float((got.argmax(1) == want.argmax(1)).mean())
    if bad.mean() > 0.05 or agree < 0.99:
        raise SystemExit(f"ONNX Runtime differs from torch on {int(bad.sum())}/{len(x)} rows "
                         f"(max {diff.max():.3g}); argmax agreement {agree:.4f}")
    return float(diff.max()), int(bad.sum()), agree


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=pathlib.Path)
    ap.add_argument("-o", "--out", type=pathlib.Path, required=True)
    ap.add_argument("--opset", type=int, default=17)
    ap.add_argument("--dynamo", action=argparse.BooleanOptionalAction, default=False,
                    help="use the torch.export-based exporter (default: the TorchScript one)")
    ap.add_argument("--data", default=None,
                    help="also compare on the first 256 images of this spec (e.g. fashion-mnist:test)")
    args = ap.parse_args(argv)

    model, ckpt = load_checkpoint(args.checkpoint)
    proto = export(model, args.out, args.opset, args.dynamo)
    onnx.checker.check_model(proto, full_check=True)
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, opset "
          f"{_opset(proto)}, {'dynamo' if args.dynamo else 'torchscript'} exporter): "
          + ", ".join(f"{k}×{v}" for k, v in sorted(ops.items())))

    rng = np.random.default_rng(0)
    samples = {"random batch 1": rng.random((1, 1, 28, 28), dtype=np.float32),
               "random batch 7": rng.random((7, 1, 28, 28), dtype=np.float32)}
    if args.data:
        from snncc.data import load_spec

        samples[f"{args.data}[:256]"] = np.ascontiguousarray(load_spec(args.data)[0][:256])
    for name, x in samples.items():
        diff, rows, agree = check(model, args.out, x)
        print(f"  onnxruntime vs torch on {name}: max |Δlogit| {diff:.2e}, {rows}/{len(x)} rows "
              f"beyond 1e-4, argmax agreement {agree:.4f}")
    print(f"  checkpoint test accuracy (torch): {ckpt.get('test_acc', float('nan')):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
