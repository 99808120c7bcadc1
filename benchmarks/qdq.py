"""QDQ models in: the bundled ReLU VGGs quantised by onnxruntime.quantization.quantize_static (QDQ
format; uint8 activations with int8 weights, uint4 with int4), compiled at T = levels, against the QDQ
model on ONNX Runtime over a test set: argmax agreement, the largest logit difference (in the QDQ
model's output steps), the images whose logits differ, and the argmax disagreements at which the QDQ
model's own top two logits are equal (a tie that its argmax breaks by index).

The compiled SNN is the time-folded one (--fold-time; the same neurons and spike counts as the
time-expanded graph, which tests/test_qdq.py checks on a subset) so that 10k images at T = 255 take
seconds. The QDQ model runs with ONNX Runtime's basic graph optimisations: its extended ones make the
uint4 models fail to load (a uint4 MaxPool).

    python benchmarks/qdq.py [--samples 10000] [--calib 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from snncc.compiler import CompileOptions, compile_model
from snncc.data import load
from snncc.session import make_session

REPO = Path(__file__).resolve().parent.parent
MODELS = {"fashion-mnist": REPO / "models/fmnist_relu_vgg.onnx", "mnist": REPO / "models/mnist_relu_vgg.onnx"}
TYPES = {"uint8": (QuantType.QUInt8, QuantType.QInt8, 255), "uint4": (QuantType.QUInt4, QuantType.QInt4, 15)}


class _Reader(CalibrationDataReader):
    def __init__(self, x: np.ndarray):
        self.batches = iter({"input": x[i:i + 128]} for i in range(0, len(x), 128))

    def get_next(self):
        return next(self.batches, None)


def _run(session: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + 1000]})[0] for i in range(0, len(x), 1000)])


def measure(dataset: str, kind: str, samples: int, calib: int, folder: Path) -> dict:
    activations, weights, levels = TYPES[kind]
    path = folder / f"{dataset}.{kind}.onnx"
    quantize_static(str(MODELS[dataset]), str(path), _Reader(load(dataset, "train")[0][:calib]),
                    quant_format=QuantFormat.QDQ, activation_type=activations, weight_type=weights)
    x, y = load(dataset, "test")
    x, y = x[:samples], y[:samples]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    qdq = _run(ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]), x)
    snn = _run(make_session(compile_model(onnx.load(path), CompileOptions(steps=levels, fold_time=True)).model), x)
    model = onnx.load(path)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    last = next(n for n in model.graph.node if n.output[0] == model.graph.output[0].name)
    step = float(inits[last.input[1]])
    disagree = qdq.argmax(1) != snn.argmax(1)
    top2 = np.sort(qdq, axis=1)[:, -2:]
    return {"dataset": dataset, "type": kind, "T": levels, "samples": samples,
            "qdq_accuracy": float(np.mean(qdq.argmax(1) == y)), "snn_accuracy": float(np.mean(snn.argmax(1) == y)),
            "ann_accuracy": float(np.mean(_run(ort.InferenceSession(str(MODELS[dataset])), x).argmax(1) == y)),
            "argmax_agreement": float(np.mean(~disagree)), "disagreements": int(disagree.sum()),
            "disagreements_at_qdq_ties": int(np.sum(disagree & (top2[:, 1] == top2[:, 0]))),
            "max_logit_difference": float(np.abs(qdq - snn).max()), "logit_step": step,
            "images_with_logits_differing": int(np.sum(np.any(qdq != snn, axis=1)))}


def render_table(rows: list[dict]) -> list[str]:
    """The markdown table of `measure`'s rows."""
    lines = ["| model | Q/DQ | T | ANN acc | QDQ acc | SNN acc | argmax agreement | disagreements (at QDQ ties) "
             "| max logit diff (steps) | images with any logit differing |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['type']} | {r['T']} | {100 * r['ann_accuracy']:.2f} | {100 * r['qdq_accuracy']:.2f} "
                     f"| {100 * r['snn_accuracy']:.2f} | {100 * r['argmax_agreement']:.2f}% | {r['disagreements']} "
                     f"({r['disagreements_at_qdq_ties']}) | {r['max_logit_difference']:.4g} "
                     f"({r['max_logit_difference'] / r['logit_step']:.2f}) | {r['images_with_logits_differing']} |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--calib", type=int, default=1000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        rows = [measure(d, k, args.samples, args.calib, Path(folder)) for d in MODELS for k in TYPES]
    print("\n".join(render_table(rows)))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
