"""Calibration modes: accuracy and cost against plain ANN inference over the calibration set.

`--modes` (the table in docs/results.md): for each model, T and calibration mode ('paper': max
thresholds + DA-QCFS; 'layerwise'; 'ridge'; 'reconstruct'; see snncc/calibration/pipeline.py), the SNN's top-1
accuracy on the 10k test images (folded graphs) and the cost of `compile --calib` as a multiple of
one ANN inference pass over the same calibration images, both timed in the same process. Rows are
appended to the JSON as they finish, so a cut run still renders (`--render JSON`); each row records
the commit it was measured at. `--resume` keeps the JSON's rows and runs the grid's missing cells;
`--rerun` runs the grid's cells again, replacing their rows (e.g. after a mode changed). The section
also shows the QDQ rows of `benchmarks/qdq.py --json benchmarks/qdq.json` where that file exists.

    python benchmarks/calibration.py --modes --json out.json --write-docs
        [--grid fmnist_relu_vgg:1,2,4:paper,layerwise,ridge,reconstruct ...] [--calib-samples 10000] [--resume | --rerun]

Without `--modes`, the cost of the paper pipeline's steps, side by side in one run:

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
import re
import subprocess
import sys
import time
from pathlib import Path

import onnx

from snncc.calibration.da_qcfs import calibrate, reference_thresholds
from snncc.calibration.dataset import CalibrationData
from snncc.calibration.pipeline import RECORDING_BATCH, CalibrationOptions
from snncc.calibration.reference_means import record_reference_means
from snncc.calibration.thresholds import ThresholdMode, record_thresholds
from snncc.compiler import CompileOptions, analyse_activations, compile_model, to_ir
from snncc.data import load
from snncc.evaluate import predict
from snncc.session import make_session

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "results.md"
START, END = "<!-- calibration-modes:start -->", "<!-- calibration-modes:end -->"
QDQ_JSON = REPO / "benchmarks" / "qdq.json"
MODES = ("paper", "layerwise", "ridge", "reconstruct")
# model stem: (dataset, T values, modes)
DEFAULT_GRID = [  # in order of priority: a cut run keeps the first
    "fmnist_relu_vgg:1,2,4,8:ridge,paper",
    "fmnist_relu_vgg:1,2,4:reconstruct",
    "fmnist_qcfs_vgg_t4:2:ridge,paper",
    "mnist_relu_vgg:1,2:ridge,paper,reconstruct",
    "fmnist_relu_vgg:1,2,4:layerwise",
    "fmnist_relu_vgg:3,16:ridge,paper",
    "fmnist_qcfs_vgg_t4:2:reconstruct",
    "fmnist_relu_vgg:3,8,16:reconstruct",
    "fmnist_qcfs_vgg_t4:1,3,8:ridge,layerwise,paper",
    "mnist_relu_vgg:4,8:ridge,paper",
]


def timed(function):
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def cpu_timed(function):
    """CPU seconds of this process (all threads): on a shared machine, steadier than wall-clock."""
    start = time.process_time()
    result = function()
    return time.process_time() - start, result


def _options(mode: str):
    return CalibrationOptions(da_qcfs=True) if mode == "paper" else CalibrationOptions(mode=mode)


def modes_table(args) -> None:
    from snncc.calibration.pipeline import auto_mode
    from snncc.evaluate import top_k_accuracy

    keep = args.json and args.json.exists() and (args.resume or args.rerun)
    report = json.loads(args.json.read_text()) if keep else {"rows": [], "ann": {}}
    if args.rerun:
        cells = {(stem, int(T), mode) for stem, steps, modes in (item.split(":") for item in args.grid)
                 for T in steps.split(",") for mode in modes.split(",")}
        report["rows"] = [r for r in report["rows"] if (r["model"], r["T"], r["mode"]) not in cells]
    done = {(r["model"], r["T"], r["mode"]) for r in report["rows"]}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    report.update(machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                  calibration_samples=args.calib_samples)
    for item in args.grid:
        stem, steps, modes = item.split(":")
        dataset = "mnist" if stem.startswith("mnist") else "fashion-mnist"
        ann = onnx.load(REPO / "models" / f"{stem}.onnx")
        x_calib = load(dataset, "train")[0][: args.calib_samples]
        x_test, y_test = load(dataset, "test")
        data = CalibrationData(x_calib, f"{dataset}:train[:{args.calib_samples}]")
        session = make_session(ann, native=False)
        if stem not in report["ann"]:
            report["ann"][stem] = top_k_accuracy(predict(session, x_test, 500, label="ANN"), y_test)
        for T in [int(t) for t in steps.split(",")]:
            for mode in modes.split(","):
                if (stem, T, mode) in done:
                    continue
                ann_cpu, _ = cpu_timed(lambda: predict(session, x_calib, RECORDING_BATCH, label="ANN pass"))
                ann_seconds, _ = timed(lambda: predict(session, x_calib, RECORDING_BATCH, label="ANN pass"))
                options = CompileOptions(steps=T, fold_time=True, calibration_data=data, calibration=_options(mode))
                cpu, (seconds, result) = cpu_timed(lambda: timed(lambda: compile_model(ann, options)))
                accuracy = top_k_accuracy(predict(make_session(result.model), x_test, 500, label=f"{stem} T={T} {mode}"), y_test)
                report["rows"].append({"model": stem, "T": T, "mode": mode, "auto": auto_mode(T) == mode,
                                       "top1": accuracy, "seconds": round(seconds, 2),
                                       "cost": round(seconds / ann_seconds, 2), "cpu_cost": round(cpu / ann_cpu, 2),
                                       "commit": commit})
                print(json.dumps(report["rows"][-1]), file=sys.stderr, flush=True)
                if args.json:
                    args.json.write_text(json.dumps(report, indent=2) + "\n")
    write_modes(report, args.write_docs)


def _cost(row: dict) -> str:
    """The CPU-time ratio where measured, else the wall-clock one (marked w)."""
    return f"{row['cpu_cost']:.1f}×" if "cpu_cost" in row else f"{row['cost']:.1f}×w"


def render_modes(report: dict) -> str:
    lines = [
        "## Calibration modes at few time-steps (beyond the paper)",
        "",
        "Regenerated by `python benchmarks/calibration.py --modes --calib-samples 5000 --json benchmarks/calibration_modes.json",
        "--write-docs` (`--render benchmarks/calibration_modes.json --write-docs` rewrites it from the committed numbers;",
        "`--render A.json B.json --json A.json` merges the rows of separate runs into A, B's rows winning).",
        f"Calibration: the first {report['calibration_samples']} training images; test: the 10k test images;",
        "SNNs compiled with `--fold-time`. Cells: top-1 % (difference to the ANN) · cost of `compile --calib` in",
        "ANN inference passes over the calibration set, both timed in the same process as CPU time of all its",
        "threads (`w`: wall-clock instead, from runs before CPU time was recorded; the machine was shared by",
        f"other jobs, so wall-clock ratios are noisy). Machine: {report['machine']}. Modes: `paper` = max thresholds + DA-QCFS (Algorithm 1);",
        "`layerwise` = progressive per-channel θ_pre/θ_post/ψ search with bias correction + least-squares read-out;",
        "`ridge` = the same + ridge refit of the weights feeding each neuron; `reconstruct` = `ridge`, then gradient",
        "block reconstruction (docs/reconstruction.md; needs torch). ★ marks the mode `--calibrate auto`",
        "(the CLI default) picks at that T.",
        "",
    ]
    modes = [m for m in MODES if any(r["mode"] == m for r in report["rows"])]
    lines += ["| model | ANN top-1 % | T | " + " | ".join(modes) + " |", "|---|---:|---:|" + "---:|" * len(modes)]
    keys = sorted({(r["model"], r["T"]) for r in report["rows"]}, key=lambda k: (k[0], k[1]))
    for stem, T in keys:
        ann = report["ann"][stem]
        cells = []
        for mode in modes:
            row = next((r for r in report["rows"] if (r["model"], r["T"], r["mode"]) == (stem, T, mode)), None)
            cells.append("–" if row is None else f"{100 * row['top1']:.2f} ({100 * (row['top1'] - ann):+.2f}) · "
                         f"{_cost(row)}{' ★' if row['auto'] else ''}")
        lines.append(f"| {stem} | {100 * ann:.2f} | {T} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", provenance(report), "", "Against the targets of issue #19 (drop in points vs the ANN; cost in ANN passes):", ""]
                     + [f"- {line}" for line in target_lines(report)] + qdq_lines())


def provenance(report: dict) -> str:
    """Which rows were measured at which commit (rows from before commits were recorded: 'earlier')."""
    cells: dict[str, dict[tuple[str, str], list[int]]] = {}
    for r in report["rows"]:
        cells.setdefault(r.get("commit", "earlier (not recorded)"), {}).setdefault((r["model"], r["mode"]), []).append(r["T"])
    return "Rows by the commit they were measured at: " + "; ".join(
        f"{commit}: " + ", ".join(f"{stem} {mode} T={','.join(map(str, sorted(ts)))}" for (stem, mode), ts in groups.items())
        for commit, groups in cells.items()) + "."


def qdq_lines() -> list[str]:
    """The QDQ table of benchmarks/qdq.py, from its JSON, where it exists."""
    if not QDQ_JSON.exists():
        return []
    sys.path.insert(0, str(Path(__file__).parent))
    from qdq import render_table

    return ["", "QDQ models (ONNX Runtime `quantize_static`, QDQ format) compiled at T = levels without calibration,",
            "against the QDQ model on ONNX Runtime over the 10k test images (`python benchmarks/qdq.py --json benchmarks/qdq.json`):",
            ""] + render_table(json.loads(QDQ_JSON.read_text()))


# (what, model, T, which mode: 'auto' or 'best', largest drop in points)
ACCURACY_TARGETS = [("default mode", "fmnist_relu_vgg", 1, "auto", 5.0), ("default mode", "fmnist_relu_vgg", 2, "auto", 1.5),
                    ("default mode", "fmnist_relu_vgg", 4, "auto", 0.2), ("default mode", "fmnist_relu_vgg", 8, "auto", 0.1),
                    ("best mode", "fmnist_relu_vgg", 1, "best", 3.5), ("best mode", "fmnist_relu_vgg", 2, "best", 1.0),
                    ("best mode", "fmnist_relu_vgg", 4, "best", 0.1), ("best mode", "mnist_relu_vgg", 1, "best", 1.0),
                    ("best mode", "mnist_relu_vgg", 2, "best", 0.2), ("best mode", "fmnist_qcfs_vgg_t4", 2, "best", 2.0)]


def target_lines(report: dict) -> list[str]:
    lines = []
    for what, stem, T, which, limit in ACCURACY_TARGETS:
        rows = [r for r in report["rows"] if r["model"] == stem and r["T"] == T and (which == "best" or r["auto"])]
        if not rows:
            lines.append(f"{stem} T={T}, {what}: not measured")
            continue
        row = max(rows, key=lambda r: r["top1"])
        drop = 100 * (report["ann"][stem] - row["top1"])
        lines.append(f"{stem} T={T}, {what} ({row['mode']}): drop {drop:.2f} (target ≤ {limit}): "
                     f"{'met' if drop <= limit + 1e-9 else 'missed'}")
    for what, select, limit in (("default mode at T ≤ 8", lambda r: r["auto"] and r["T"] <= 8, 20),
                                ("default mode at T > 8", lambda r: r["auto"] and r["T"] > 8, 3),
                                ("any mode", lambda r: True, 200)):
        costs = [r.get("cpu_cost", r["cost"]) for r in report["rows"] if select(r)]
        if costs:
            lines.append(f"cost, {what}: at most {max(costs):.1f}× (target ≤ {limit}×): {'met' if max(costs) <= limit else 'missed'}")
    return lines


def write_modes(report: dict, write_docs: bool) -> None:
    table = render_modes(report)
    print(table)
    if write_docs:
        text = DOCS.read_text()
        section = f"{START}\n{table}\n{END}"
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: section, text, flags=re.S) \
            if START in text else f"{text.rstrip()}\n\n{section}\n"
        DOCS.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", action="store_true", help="the accuracy/cost table of the calibration modes")
    parser.add_argument("--grid", nargs="+", default=DEFAULT_GRID, help="MODEL_STEM:T,T,...:MODE,MODE,... items")
    parser.add_argument("--calib-samples", type=int, default=10000)
    parser.add_argument("--resume", action="store_true", help="--modes: keep the rows already in --json")
    parser.add_argument("--rerun", action="store_true", help="--modes: keep the rows in --json except the grid's, which run again")
    parser.add_argument("--render", type=Path, nargs="+",
                        help="--modes: no run, render the table from these JSONs (rows merged; a later file's row replaces an earlier one's)")
    parser.add_argument("--write-docs", action="store_true", help=f"--modes: replace the section of {DOCS.name} between its markers")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "fmnist_relu_vgg.onnx")
    parser.add_argument("--samples", type=int, default=10000)
    parser.add_argument("--T", dest="steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.render:
        reports = [json.loads(path.read_text()) for path in args.render]
        cells = {(r["model"], r["T"], r["mode"]): r for report in reports for r in report["rows"]}  # later files win
        merged = {**reports[0], "rows": list(cells.values()), "ann": {k: v for report in reports for k, v in report["ann"].items()}}
        if args.json:  # the merged numbers, to commit
            args.json.write_text(json.dumps(merged, indent=2) + "\n")
        write_modes(merged, args.write_docs)
        return
    if args.modes:
        modes_table(args)
        return
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    ann = onnx.load(args.model)
    x = load("fashion-mnist", "train")[0][: args.samples]
    data = CalibrationData(x, f"fashion-mnist:train[:{args.samples}]")
    session = make_session(ann, native=False, threads=args.threads)
    predict(session, x[:256], args.batch_size)  # warm-up
    rows = {}
    rows["ANN inference"], _ = timed(lambda: predict(session, x, args.batch_size, label="ANN inference"))
    analysed = analyse_activations(to_ir(ann))
    rows["threshold recording (max)"], (recorded, _) = timed(
        lambda: record_thresholds(analysed, data, ThresholdMode.parse("max"), RECORDING_BATCH))
    rows["threshold recording (max) + reference means"], (_, reference) = timed(
        lambda: record_thresholds(analysed, data, ThresholdMode.parse("max"), RECORDING_BATCH, means_batch=args.batch_size))
    rows["threshold recording (p99.9)"], _ = timed(
        lambda: record_thresholds(analysed, data, ThresholdMode.parse("p99.9"), RECORDING_BATCH))
    thetas = reference_thresholds(analysed, recorded)
    rows["reference means alone (non-max thresholds)"], _ = timed(lambda: record_reference_means(
        analysed, thetas, data, args.batch_size, RECORDING_BATCH))
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
