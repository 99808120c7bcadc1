"""SNN accuracy against T in the structure of the paper's Tables 3-4, on MNIST and Fashion-MNIST.

For each dataset, the committed models under models/ (`<prefix>_qcfs_vgg_t<T̃>.onnx`, a QCFS ANN,
and `<prefix>_relu_vgg.onnx`, a ReLU ANN; prefix `mnist` or `fmnist`) are swept over T with
`snncc.sweep.run_sweep`: ANN accuracy, then SNN accuracy per T for each conversion case:
QCFS at T = T̃ (lossless), QCFS at T ≠ T̃ without and with DA-QCFS calibration, and the ReLU ANN
converted training-free (thresholds only, and thresholds + DA-QCFS). Test: the full 10k test set;
calibration: the first 10k training images. Writes docs/results.md and docs/results.png.

By default the SNNs are evaluated as folded graphs (`--fold-time`: synaptic layers run once on
rates; the outputs and spike counts equal the time-expanded graph's, see docs/ops.md), so a T=64
row costs what T=1 does. A spot check compiles the uncalibrated cases time-expanded as well and
compares predictions on the first `--check-samples` test images.

    .venv/bin/python benchmarks/accuracy.py                  # full run, rewrites docs/results.md
    .venv/bin/python benchmarks/accuracy.py --samples 1000 --calib-samples 1000 --out /tmp/r.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime

import snncc
from snncc.calibration.dataset import CalibrationData
from snncc.compiler import CompileOptions, compile_model
from snncc.data import load
from snncc.evaluate import SnnEvaluation
from snncc.session import runtime_description
from snncc.sweep import run_sweep

REPO = Path(__file__).resolve().parent.parent
DATASETS = {"mnist": ("mnist", "MNIST"), "fashion-mnist": ("fmnist", "Fashion-MNIST")}
STEPS = [1, 2, 4, 8, 16, 32, 64]
# (row label, model kind, sweep variant, which T the row holds)
CASES = [
    ("QCFS, T = T̃ (lossless)", "qcfs", "qcfs", lambda T, levels: T == levels),
    ("QCFS, T ≠ T̃, no calibration", "qcfs", "qcfs", lambda T, levels: T != levels),
    ("QCFS, T ≠ T̃, DA-QCFS calibration", "qcfs", "qcfs+cal", lambda T, levels: T != levels),
    ("ReLU, training-free: thresholds only", "relu", "relu-thr", lambda T, levels: True),
    ("ReLU, training-free: thresholds + DA-QCFS", "relu", "relu+cal", lambda T, levels: True),
]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# The parallel-neuron cases; the serial-IF baseline (T times the ANN's cost per T) is in
# benchmarks/speed.py's accuracy-matched comparison instead.
VARIANTS = {"qcfs": ["qcfs", "qcfs+cal"], "relu": ["relu-thr", "relu+cal"]}


def find_models(prefix: str, folder: Path) -> dict[str, Path | None]:
    qcfs = sorted(folder.glob(f"{prefix}_qcfs_*.onnx"))
    relu = sorted(folder.glob(f"{prefix}_relu_*.onnx"))
    return {"qcfs": qcfs[0] if qcfs else None, "relu": relu[0] if relu else None}


def spot_check(model: onnx.ModelProto, source: str, x: np.ndarray, steps: list[int], calibration, kind: str) -> list[dict]:
    """Folded vs time-expanded graph of the uncalibrated case: identical predictions and logits?"""
    from snncc.calibration.pipeline import CalibrationOptions

    checks = []
    for T in steps:
        fields = {} if kind == "qcfs" else {"calibration_data": calibration,
                                             "calibration": CalibrationOptions(da_qcfs=False)}
        outputs = {}
        for fold in (True, False):
            compiled = compile_model(model, CompileOptions(steps=T, source=source, fold_time=fold, **fields)).model
            outputs[fold] = SnnEvaluation(compiled, source, x, "check").run(
                label=f"check T={T} {'folded' if fold else 'expanded'}").logits
        checks.append({"T": T, "samples": len(x),
                       "same_argmax": float(np.mean(outputs[True].argmax(1) == outputs[False].argmax(1))),
                       "max_abs_logit_diff": float(np.abs(outputs[True] - outputs[False]).max())})
        log(f"  spot check T={T}: folded vs expanded argmax identical on {100 * checks[-1]['same_argmax']:.2f}% "
            f"of {len(x)}, max |Δlogit| {checks[-1]['max_abs_logit_diff']:.2g}")
    return checks


def run(args) -> dict:
    results = {}
    for dataset in args.datasets:
        prefix, title = DATASETS[dataset]
        models = find_models(prefix, args.models)
        x, y = load(dataset, "test")
        x, y = x[:args.samples], y[:args.samples]
        calib_x, _ = load(dataset, "train")
        calibration = CalibrationData(calib_x[:args.calib_samples], f"{dataset}:train[:{args.calib_samples}]")
        entry = {"title": title, "samples": len(x), "calibration": calibration.source, "models": {}, "checks": {}}
        for kind, path in models.items():
            if path is None:
                log(f"{title}: no {'QCFS' if kind == 'qcfs' else 'ReLU'} model models/{prefix}_{kind}_*.onnx; its rows stay empty")
                continue
            source = str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
            log(f"{title}: sweeping {source} over T={','.join(map(str, args.steps))} on {len(x)} test images")
            model = onnx.load(path)
            started = time.perf_counter()
            sweep = run_sweep(model, source, args.steps, x, y, f"{dataset}:test", calibration, VARIANTS[kind],
                              batch_size=args.batch_size, fold_time=args.fold_time, echo=lambda line: log("  " + line))
            entry["models"][kind] = {**sweep.to_json(), "seconds": time.perf_counter() - started}
            if args.check_samples and args.fold_time:
                entry["checks"][kind] = spot_check(model, source, x[:args.check_samples], args.steps, calibration, kind)
        results[dataset] = entry
    return results


def pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def table(entry: dict, steps: list[int]) -> list[str]:
    lines = ["| ANN | case | ANN top-1 % | " + " | ".join(f"T={T}" for T in steps) + " |",
             "|---|---|---:|" + "---:|" * len(steps)]
    for label, kind, variant, holds in CASES:
        sweep = entry["models"].get(kind)
        if sweep is None:
            lines.append(f"| (missing) | {label} | – | " + " | ".join("–" for _ in steps) + " |")
            continue
        levels = sweep["levels"]
        cells = []
        for T in steps:
            row = next((r for r in sweep["rows"] if r["T"] == T and r["variant"] == variant), None)
            if row is None or not holds(T, levels) or row["top1"] is None:
                cells.append("–")
            else:  # as in the paper's Table 4: the accuracy and its difference to the ANN
                cells.append(f"{pct(row['top1'])} ({100 * (row['top1'] - sweep['ann']['top1']):+.2f})")
        name = Path(sweep["model"]).name + (f" (T̃={levels})" if levels else "")
        lines.append(f"| {name} | {label} | {pct(sweep['ann']['top1'])} | " + " | ".join(cells) + " |")
    return lines


def activity_table(entry: dict, steps: list[int]) -> list[str]:
    lines = ["| model | case | " + " | ".join(f"T={T}" for T in steps) + " |", "|---|---|" + "---:|" * len(steps)]
    for kind, variant in (("qcfs", "qcfs"), ("relu", "relu+cal")):
        sweep = entry["models"].get(kind)
        if sweep is None:
            continue
        for what, key, fmt in (("firing rate", "firing_rate", "{:.3f}"), ("SOPs/sample (M)", "sops_per_sample", "{:.2f}"),
                               ("energy SNN/ANN", "energy_ratio", "{:.2f}")):
            cells = []
            for T in steps:
                row = next((r for r in sweep["rows"] if r["T"] == T and r["variant"] == variant), None)
                value = None if row is None else row[key]
                cells.append("–" if value is None else fmt.format(value / 1e6 if key == "sops_per_sample" else value))
            lines.append(f"| {Path(sweep['model']).name} | {variant}: {what} | " + " | ".join(cells) + " |")
    return lines


def plot(results: dict, steps: list[int], path: Path) -> None:
    """One panel per dataset with models: accuracy against T per case, the ANNs as horizontal lines.
    The QCFS curves pass through T = T̃, where both cases are the lossless conversion (starred)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [entry for entry in results.values() if entry["models"]]
    if not shown:
        raise ValueError("no dataset has a model: nothing to plot")
    fig, axes = plt.subplots(1, len(shown), figsize=(5.6 * len(shown), 3.8), dpi=90, squeeze=False)
    for ax, entry in zip(axes[0], shown):
        for label, kind, variant, holds in CASES:
            sweep = entry["models"].get(kind)
            if sweep is None:
                continue
            levels = sweep["levels"]
            lossless = [(r["T"], 100 * r["top1"]) for r in sweep["rows"]
                        if kind == "qcfs" and r["variant"] == "qcfs" and r["T"] == levels and r["top1"] is not None]
            if label.startswith("QCFS, T = T̃"):
                if lossless:
                    ax.plot(*zip(*lossless), marker="*", markersize=13, linestyle="none", color="black", zorder=5, label=label)
                continue
            points = [(r["T"], 100 * r["top1"]) for r in sweep["rows"]
                      if r["variant"] == variant and holds(r["T"], levels) and r["top1"] is not None]
            points = sorted(points + lossless)
            if points:
                ax.plot(*zip(*points), marker="o", markersize=4, label=label)
        for kind, style in (("qcfs", "--"), ("relu", ":")):
            sweep = entry["models"].get(kind)
            if sweep is not None and sweep["ann"]["top1"] is not None:
                ax.axhline(100 * sweep["ann"]["top1"], color="gray", linestyle=style, linewidth=1,
                           label=f"{'QCFS' if kind == 'qcfs' else 'ReLU'} ANN")
        ax.set_xscale("log", base=2)
        ax.set_xticks(steps, [str(s) for s in steps])
        ax.set_xlabel("time-steps T")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_title(f"{entry['title']} ({entry['samples']} test images)")
        ax.grid(True, alpha=0.3)
        low = min([float(np.min(line.get_ydata())) for line in ax.get_lines() if len(line.get_ydata())] + [100])
        ax.set_ylim(max(low - 2, 0), 100)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def git_commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()


def markdown(results: dict, meta: dict, figure: str | None) -> str:
    steps = meta["steps"]
    sizes = ", ".join(f"{e['title']}: {e['samples']}" for e in results.values())
    out = [
        "# Results: SNN accuracy against time-steps",
        "",
        "Regenerated by `.venv/bin/python benchmarks/accuracy.py` (do not edit by hand). The structure follows",
        "the paper's Tables 3-4: the ANN's accuracy, then the converted SNN's per T for each conversion case",
        "(DESIGN.md §1, Table 2). A \"–\" is a cell the case does not cover (e.g. T = T̃ only in the",
        "lossless row). Models: the small VGG of `models/qcfs.py` trained by `models/train.py`",
        "(the paper's networks are in `models/paper_nets.py`; CIFAR/ImageNet are not used here).",
        "",
        f"- test data: {sizes} test images; "
        f"calibration: the first {meta['calib_samples']} training images of the same dataset",
        f"- SNNs evaluated as {'folded graphs (`--fold-time`; equal outputs, see the spot check below)' if meta['fold_time'] else 'time-expanded graphs'}, "
        "top-1 accuracy in %",
        f"- snncc {snncc.__version__} (commit {meta['commit']}), onnxruntime {onnxruntime.__version__}, {meta['runtime']}",
        f"- run on {platform.machine()} with {platform.python_implementation()} {platform.python_version()}, "
        f"{meta['date']}, {meta['seconds'] / 60:.0f} min",
        "",
    ]
    if figure:
        out += [f"![SNN top-1 accuracy against T]({figure})", ""]
    out += [
        "How to read the numbers: each cell is the SNN's top-1 accuracy in % and, in parentheses, its",
        "difference to the ANN it was converted from. The activity tables come from `snncc eval`'s counts",
        "(`snncc/spikes.py`): firing rate = spikes per neuron per time-step; SOPs = Σ over spikes of the",
        "synapses each spike drives (exact per layer, borders, strides and groups included; the read-out",
        "head counts spikes × its fan-out); energy = SOPs × 0.9 pJ + MACs on analog values × 4.6 pJ for",
        "the SNN against the ANN's MACs × 4.6 pJ (45 nm figures; memory traffic not counted).",
        "",
        "Reproduce one row from the command line, e.g. "
        "`snncc sweep models/fmnist_qcfs_vgg_t4.onnx --T 2,4,8 --data fashion-mnist:test "
        "--calib fashion-mnist:train --calib-samples 10000 --fold-time`.",
        "",
    ]
    for entry in results.values():
        out += [f"## {entry['title']}", ""] + table(entry, steps) + [""]
        missing = [kind for kind in ("qcfs", "relu") if kind not in entry["models"]]
        for kind in missing:
            prefix = [p for d, (p, t) in DATASETS.items() if t == entry["title"]][0]
            out += [f"Missing: no {'QCFS' if kind == 'qcfs' else 'ReLU'} model `models/{prefix}_{kind}_*.onnx` in the repository, so its rows are "
                    "empty. Train and export it with `models/train.py` and `models/export.py` "
                    "(see their docstrings), then rerun this script.", ""]
        if entry["models"]:
            out += ["Spiking activity and the energy estimate (45 nm: 0.9 pJ per accumulate, 4.6 pJ per MAC; "
                    "SNN = SOPs + the first layer's MACs on the analog input):", ""]
            out += activity_table(entry, steps) + [""]
        for kind, checks in entry["checks"].items():
            cells = ", ".join(f"T={c['T']}: {100 * c['same_argmax']:.1f}% / {c['max_abs_logit_diff']:.1g}" for c in checks)
            out += [f"Spot check, {'QCFS' if kind == 'qcfs' else 'ReLU thresholds-only'} model, folded vs time-expanded graph on the first "
                    f"{checks[0]['samples']} test images (identical argmax / max |Δlogit|): {cells}.", ""]
    return "\n".join(out)


def kept_sections(path: Path) -> str:
    """Sections other scripts maintain in the same file (`<!-- name:start -->` ... `<!-- name:end -->`),
    carried over unchanged below this script's part."""
    import re

    if not path.exists():
        return "\n"
    sections = [m.group(0) for m in re.finditer(r"<!-- ([\w-]+):start -->.*?<!-- \1:end -->", path.read_text(), flags=re.S)]
    return "\n" + "".join(f"\n{section}\n" for section in sections)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="mnist,fashion-mnist", type=lambda s: s.split(","))
    ap.add_argument("--T", dest="steps", default=",".join(map(str, STEPS)), type=lambda s: [int(v) for v in s.split(",")])
    ap.add_argument("--samples", type=int, default=10000, help="test images (default: all 10k)")
    ap.add_argument("--calib-samples", type=int, default=10000, help="calibration images (first N of train)")
    ap.add_argument("--fold-time", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--check-samples", type=int, default=256, help="folded-vs-expanded spot check size (0: none)")
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--models", type=Path, default=REPO / "models", help="folder with the ONNX models")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "results.md")
    ap.add_argument("--json", type=Path, help="also write all numbers as JSON")
    ap.add_argument("--render", type=Path, help="no run: rewrite the page and plot from a JSON written by --json")
    args = ap.parse_args(argv)
    onnxruntime.set_default_logger_severity(3)
    unknown = [d for d in args.datasets if d not in DATASETS]
    if unknown:
        ap.error(f"unknown dataset(s) {unknown}; expected {list(DATASETS)}")
    if args.render:
        saved = json.loads(args.render.read_text())
        results, meta = saved["results"], saved["meta"]
    else:
        started = time.perf_counter()
        results = run(args)
        meta = {"seconds": time.perf_counter() - started, "commit": git_commit(), "date": datetime.date.today().isoformat(),
                "runtime": runtime_description().replace(str(REPO) + "/", ""), "steps": args.steps,
                "calib_samples": args.calib_samples, "fold_time": args.fold_time}
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    figure = None
    png = args.out.with_suffix(".png")
    try:
        plot(results, meta["steps"], png)
        figure = png.name
    except ImportError:
        log("matplotlib is not installed (pip install 'snncc[plot]'): no plot")
    except ValueError as error:
        log(f"no plot: {error}")
    args.out.write_text(markdown(results, meta, figure) + kept_sections(args.out))
    log(f"wrote {args.out}" + (f" and {png}" if figure else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
