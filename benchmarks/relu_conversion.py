"""Training-free conversion of a ReLU CNN: accuracy per T and threshold choice, with and without
DA-QCFS calibration (paper Table 2, row 3; Algorithm 1), on the full Fashion-MNIST test set.

Thresholds are recorded and DA-QCFS is calibrated on the first N training images. Each cell is
the SNN's top-1 accuracy on the 10k test images. The SNNs are compiled with --fold-time, which
computes the same spike counts as the time-expanded graph up to float ties (tests/
test_folding_and_serial_if.py), at a cost that does not grow with T; one expanded graph is
evaluated too, as a check, and its difference to the folded one is reported.

    python benchmarks/relu_conversion.py [--model models/fmnist_relu_vgg.onnx] [--calib-samples 10000]
                                         [--json out.json] [--write-docs]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import onnx

from snncc.calibration.dataset import CalibrationData
from snncc.calibration.pipeline import CalibrationOptions
from snncc.calibration.thresholds import ThresholdMode
from snncc.compiler import CompileOptions, compile_model
from snncc.data import load
from snncc.evaluate import predict, top_k_accuracy
from snncc.session import make_session

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "results.md"
START, END = "<!-- relu-conversion:start -->", "<!-- relu-conversion:end -->"
ALL_STEPS = (2, 4, 8, 16, 32)
LOW_STEPS = (2, 4)  # where the paper is weakest: alternative threshold choices are tried here
MODES = ("max", "p99.9", "p99.99", "mse")


def accuracy(model: onnx.ModelProto, x, y, label: str) -> float:
    return top_k_accuracy(predict(make_session(model), x, 500, label=label), y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=REPO / "models" / "fmnist_relu_vgg.onnx")
    parser.add_argument("--calib-samples", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=32, help="calibration batch size")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--write-docs", action="store_true", help=f"replace the section of {DOCS.name} between its markers")
    args = parser.parse_args()

    ann = onnx.load(args.model)
    x_train = load("fashion-mnist", "train")[0][: args.calib_samples]
    x_test, y_test = load("fashion-mnist", "test")
    data = CalibrationData(x_train, f"fashion-mnist:train[:{args.calib_samples}]")
    ann_accuracy = accuracy(ann, x_test, y_test, "ANN")
    rows = []
    for mode in MODES:
        for steps in ALL_STEPS if mode == "max" else LOW_STEPS:
            cells = {}
            for da_qcfs in (False, True):
                options = CompileOptions(steps=steps, fold_time=True, calibration_data=data,
                                         calibration=CalibrationOptions(ThresholdMode.parse(mode), da_qcfs, batch_size=args.batch_size))
                snn = compile_model(ann, options).model
                cells["da_qcfs" if da_qcfs else "thresholds_only"] = accuracy(snn, x_test, y_test, f"{mode} T={steps} {'DA-QCFS' if da_qcfs else 'thresholds'}")
            rows.append({"threshold": mode, "T": steps, **cells})
            print(json.dumps(rows[-1]))
    check_steps = 4
    expanded = compile_model(ann, CompileOptions(steps=check_steps, calibration_data=data)).model
    expanded_accuracy = accuracy(expanded, x_test, y_test, f"expanded check T={check_steps}")
    folded_accuracy = next(r["da_qcfs"] for r in rows if r["threshold"] == "max" and r["T"] == check_steps)
    report = {"model": str(args.model.relative_to(REPO) if args.model.is_relative_to(REPO) else args.model),
              "ann_accuracy": ann_accuracy, "calibration": data.source, "calibration_batch_size": args.batch_size,
              "rows": rows, "expanded_check": {"T": check_steps, "expanded": expanded_accuracy, "folded": folded_accuracy}}
    table = render(report)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.write_docs:
        text = DOCS.read_text() if DOCS.exists() else "# Results\n"
        section = f"{START}\n{table}\n{END}"
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: section, text, flags=re.S) if START in text else f"{text.rstrip()}\n\n{section}\n"
        DOCS.write_text(text)


def render(report: dict) -> str:
    ann = report["ann_accuracy"]
    lines = [
        "## Training-free ReLU conversion (threshold recording + DA-QCFS)",
        "",
        f"Model `{report['model']}` (ANN {100 * ann:.2f}% on the 10k Fashion-MNIST test images); thresholds and",
        f"DA-QCFS calibrated on {report['calibration']} (batch {report['calibration_batch_size']}, momentum 0.99).",
        "Cells: SNN top-1 accuracy (difference to the ANN). Regenerate with `python benchmarks/relu_conversion.py --write-docs`.",
        "",
        "| thresholds | T | thresholds only | with DA-QCFS |",
        "|---|---:|---:|---:|",
    ]
    for row in report["rows"]:
        cells = [f"{100 * row[k]:.2f}% ({100 * (row[k] - ann):+.2f})" for k in ("thresholds_only", "da_qcfs")]
        lines.append(f"| {row['threshold']} | {row['T']} | {cells[0]} | {cells[1]} |")
    check = report["expanded_check"]
    lines += ["", f"Check: the time-expanded SNN at T = {check['T']} (max thresholds, DA-QCFS) scores "
              f"{100 * check['expanded']:.2f}%, the folded one {100 * check['folded']:.2f}%."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
