"""The summary of benchmarks/gpu/run.sh: OUTDIR/summary.json and OUTDIR/summary.md from the steps'
statuses (OUTDIR/steps.tsv) and the JSON files of the steps that ran.

    python3 benchmarks/gpu/summary.py OUTDIR "GPU description or empty"
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path


def load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def harness_table(harness: dict) -> list[str]:
    lines = [f"CUDA kernels vs CPU kernels on {harness['device']}, {harness['neurons']:,} neurons per step, best of "
             f"{harness['repeats']}; GB/s of the bytes read and written (copy: device-to-device).", "",
             "| dtype | T | mismatches (parallel / serial IF / constant input) | parallel GB/s | serial IF GB/s "
             "| copy GB/s | parallel / copy |", "|---|---|---|---|---|---|---|"]
    for r in harness["results"]:
        g = r["gb_per_s"]
        lines.append(f"| {r['dtype']} | {r['T']} | {r['mismatched_values']} / {r['serial_if_mismatched_values']} / "
                     f"{r['constant_input_mismatched_values']} | {g['parallel']:.0f} | {g['serial_if']:.0f} | "
                     f"{g['copy']:.0f} | {g['parallel'] / g['copy']:.2f}× |")
    return lines


def models_table(models: dict) -> list[str]:
    lines = [f"Compiled Fashion-MNIST VGG (T = 4), batch {models['batch']}, onnxruntime {models['onnxruntime']}:", "",
             "| variant | snn nodes ran on | same class as CPU | max |Δ logit| | ms/batch CUDA | ms/batch CPU |",
             "|---|---|---|---|---|---|"]
    for r in models["results"]:
        providers = "; ".join(f"{op}: {', '.join(p)}" for op, p in r["snn_node_providers"].items())
        ms = r["ms_per_batch"]
        lines.append(f"| {r['variant']} | {providers} | {r['same_class_fraction']:.3f} | {r['max_abs_difference']:.2g} "
                     f"| {ms['cuda']:.2f} | {ms['cpu']:.2f} |")
    return lines


def torch_table(torch: dict) -> list[str]:
    lines = [f"PyTorch {torch['torch']} dense equivalent on {torch['device']}:", "", "| T | neurons | ms | GB/s |",
             "|---|---|---|---|"]
    lines += [f"| {r['T']} | {r['neurons']:,} | {r['ms']:.3f} | {r['gb_per_s']:.0f} |" for r in torch["results"]]
    return lines


def main() -> None:
    out, gpu = Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else ""
    steps = []
    for line in (out / "steps.tsv").read_text().splitlines():
        name, status, seconds, note = (line.split("\t") + [""] * 4)[:4]
        steps.append({"step": name, "status": status, "seconds": int(seconds or 0), "note": note})
    tests_log = out / "ort_cuda.log"
    results = {"harness": load(out / "harness.json"), "ort_cuda_models": load(out / "ort_cuda.json"),
               "torch": load(out / "torch.json")}
    summary = {"gpu": gpu or None, "host": platform.node(), "steps": steps, **results,
               "ort_cuda_tests": tests_log.read_text().strip().splitlines()[-1] if tests_log.exists() else None}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    md = ["# GPU check (benchmarks/gpu/run.sh)", "",
          f"GPU: {gpu}" if gpu else "GPU: none found; the CUDA code was built, nothing ran on a GPU.", "",
          "| step | status | seconds | note |", "|---|---|---|---|"]
    md += [f"| {s['step']} | {s['status']} | {s['seconds']} | {s['note']} |" for s in steps]
    if summary["ort_cuda_tests"]:
        md += ["", f"CUDA tests on ONNX Runtime: {summary['ort_cuda_tests']}"]
    for key, table in (("harness", harness_table), ("ort_cuda_models", models_table), ("torch", torch_table)):
        if results[key]:
            md += [""] + table(results[key])
    (out / "summary.md").write_text("\n".join(md) + "\n")
    print("\n".join(md), file=sys.stderr)


if __name__ == "__main__":
    main()
