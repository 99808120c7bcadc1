"""Measure an exported ONNX classifier on ONNX Runtime: test accuracy, parameters, file size.

This is how the accuracies in models/README.md are measured (the full 10k test split, CPU EP):

    .venv/bin/python models/evaluate.py models/fmnist_qcfs_vgg_t4.onnx --data fashion-mnist:test
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from snncc.data import load_spec  # noqa: E402


def count_parameters(model: onnx.ModelProto) -> int:
    """Elements in float initializers and float Constant nodes with more than one element."""
    n = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and len(a.t.dims) and int(np.prod(a.t.dims)) > 1:
                    n += int(np.prod(a.t.dims))
    return n


def accuracy(path: pathlib.Path, x: np.ndarray, y: np.ndarray, batch: int = 500) -> float:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    correct = 0
    for i in range(0, len(x), batch):
        logits = sess.run(None, {name: np.ascontiguousarray(x[i : i + batch])})[0]
        correct += int((logits.argmax(1) == y[i : i + batch]).sum())
    return correct / len(x)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=pathlib.Path)
    ap.add_argument("--data", default="fashion-mnist:test")
    args = ap.parse_args(argv)
    x, y = load_spec(args.data)
    if y is None:
        raise SystemExit(f"{args.data} has no labels")
    for path in args.models:
        proto = onnx.load(str(path))
        acc = accuracy(path, x, y)
        print(f"{path}: accuracy {acc:.4f} on {args.data} ({len(x)} images), "
              f"{count_parameters(proto)} parameters, {path.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
