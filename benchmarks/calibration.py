"""Cost of calibration against plain ANN inference over the same samples, side by side in one run.

For a ReLU model: the ANN's inference over N calibration samples; threshold recording (max alone;
max plus the reference path's per-batch means, the one pass `compile --calib` makes before
calibrating; p99.9); the separate reference pass that thresholds other than the maximum need;
DA-QCFS calibration (Algorithm 1: the actual path in one ONNX Runtime graph); and the whole
`compile --calib` (recording + calibration + the passes). Reported as seconds and as ratios to ANN
inference. The issue's goal: calibrating 10k Fashion-MNIST samples costs under ~3x ANN inference.

    python benchmarks/calibration.py [--model models/fmnist_relu_vgg.onnx] [--samples 10000]
                                     [--T 4] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import onnx

from snncc.calibration.da_qcfs import calibrate, reference_thresholds
from snncc.calibration.dataset import CalibrationData
from snncc.calibration.pipeline import RECORDING_BATCH, CalibrationOptions
from snncc.calibration.reference_means import ReferenceMeans, record_reference_means
from snncc.calibration.thresholds import ThresholdMode, record_thresholds
from snncc.compiler import CompileOptions, analyse_activations, compile_model, to_ir
from snncc.data import load
from snncc.evaluate import predict
from snncc.session import make_session

REPO = Path(__file__).resolve().parent.parent


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "fmnist_relu_vgg.onnx")
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--T", dest="steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    ann = onnx.load(args.model)
    x = load("fashion-mnist", "train")[0][: args.samples]
    data = CalibrationData(x, f"fashion-mnist:train[:{args.samples}]")
    session = make_session(ann, native=False, threads=args.threads)
    predict(session, x[:256], args.batch_size)  # warm-up
    rows = {}
    rows["ANN inference"], _ = timed(lambda: predict(session, x, args.batch_size, label="ANN inference"))
    analysed = analyse_activations(to_ir(ann))
    rows["threshold recording (max)"], recorded = timed(
        lambda: record_thresholds(analysed, data, ThresholdMode.parse("max"), RECORDING_BATCH))
    reference = ReferenceMeans(analysed, len(x), args.batch_size)
    rows["threshold recording (max) + reference means"], _ = timed(
        lambda: record_thresholds(analysed, data, ThresholdMode.parse("max"), RECORDING_BATCH, means=reference))
    rows["threshold recording (p99.9)"], _ = timed(
        lambda: record_thresholds(analysed, data, ThresholdMode.parse("p99.9"), RECORDING_BATCH))
    thetas = reference_thresholds(analysed, recorded)
    rows["reference means alone (non-max thresholds)"], _ = timed(lambda: record_reference_means(
        analysed, thetas, data, ReferenceMeans(analysed, len(x), args.batch_size), RECORDING_BATCH))
    rows[f"DA-QCFS calibration (T={args.steps})"], _ = timed(
        lambda: calibrate(analysed, data, thetas, args.steps, reference, 0.99))
    options = CompileOptions(steps=args.steps, calibration_data=data, calibration=CalibrationOptions(batch_size=args.batch_size))
    rows[f"compile --calib (max + DA-QCFS, T={args.steps})"], _ = timed(lambda: compile_model(ann, options))

    base = rows["ANN inference"]
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads",
        "model": str(args.model.relative_to(REPO) if args.model.is_relative_to(REPO) else args.model),
        "samples": args.samples, "T": args.steps, "batch_size": args.batch_size,
        "rows": [{"step": k, "seconds": round(v, 3), "ratio_to_ann": round(v / base, 2)} for k, v in rows.items()],
    }
    print(json.dumps(report, indent=2))
    print(f"\n| step ({args.samples} samples) | seconds | × ANN inference |\n|---|---:|---:|")
    for row in report["rows"]:
        print(f"| {row['step']} | {row['seconds']:.2f} | {row['ratio_to_ann']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
