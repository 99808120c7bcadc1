"""T-sweeps: compile one ANN at several T in each applicable conversion variant, evaluate every
SNN against the ANN on the same data, and write the table (text, CSV, JSON) and a plot.

Variants (the cases of the paper's Table 2; rows of its Tables 3-4):

| key        | model | what                                                          | when |
|------------|-------|---------------------------------------------------------------|------|
| `qcfs`     | QCFS  | no calibration: lossless at T = T̃, else φ = ψ = 0             | always |
| `qcfs+cal` | QCFS  | DA-QCFS calibration (Algorithm 1)                             | T ≠ T̃ and calibration data |
| `relu-thr` | ReLU  | thresholds only (per-channel max), `CalibrationOptions(da_qcfs=False)` | calibration data |
| `relu+cal` | ReLU  | thresholds + DA-QCFS calibration (training-free conversion)   | calibration data |
| `qcfs-if`  | QCFS  | serial-IF baseline (`--neuron if`), the QCFS θ                 | always |
| `relu-if`  | ReLU  | serial-IF baseline, thresholds only (the classic conversion)  | calibration data |

The parallel columns run folded unless asked otherwise (folded and expanded parallel SNNs give the
same outputs; folded ones run each synaptic layer once). The serial-IF columns are baselines, run
only when asked for (`serial_if=True`, or named in the variant keys): they always run
time-expanded (their neurons depend on the order of the inputs, so they cannot be folded) and cost
T times the ANN per input.

Extension point: `VARIANTS` is the list of columns. Another column is one more `Variant` passed
to `register_variant`.

Invariant: every (T, variant) row is evaluated on the same inputs as the ANN, and the files hold
exactly the rows of the printed table.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from snncc.errors import SnnccError

QCFS_KIND, RELU_KIND = "qcfs", "relu"


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What kind of ANN the sweep converts: all-QCFS (with its T̃) or ReLU/Clip (needs calibration)."""

    kind: str
    levels: int | None = None


@dataclasses.dataclass(frozen=True)
class Variant:
    key: str  # column name in the CSV/JSON and the table
    label: str  # legend text
    applies: Callable[[ModelInfo, int, bool], bool]  # (model, T, calibration data given)
    options: Callable[[int, ModelInfo], dict]  # extra CompileOptions fields for this T
    needs_calibration: bool = False  # pass the calibration data to the compiler
    baseline: bool = False  # opt-in: run only when asked for (the serial-IF columns)


def _calibration(**fields):
    from snncc.calibration.pipeline import CalibrationOptions

    return CalibrationOptions(**fields)


VARIANTS: list[Variant] = [
    Variant("qcfs", "QCFS, no calibration", lambda info, T, calib: info.kind == QCFS_KIND, lambda T, info: {}),
    Variant("qcfs+cal", "QCFS + DA-QCFS calibration",
            lambda info, T, calib: info.kind == QCFS_KIND and calib and T != info.levels,
            lambda T, info: {"calibration": _calibration(da_qcfs=True)}, needs_calibration=True),
    Variant("relu-thr", "ReLU, thresholds only", lambda info, T, calib: info.kind == RELU_KIND,
            lambda T, info: {"calibration": _calibration(da_qcfs=False)}, needs_calibration=True),
    Variant("relu+cal", "ReLU + DA-QCFS calibration", lambda info, T, calib: info.kind == RELU_KIND,
            lambda T, info: {"calibration": _calibration(da_qcfs=True)}, needs_calibration=True),
    Variant("qcfs-if", "QCFS, serial IF baseline", lambda info, T, calib: info.kind == QCFS_KIND,
            lambda T, info: {"neuron": "if", "fold_time": False}, baseline=True),
    Variant("relu-if", "ReLU, serial IF baseline", lambda info, T, calib: info.kind == RELU_KIND,
            lambda T, info: {"neuron": "if", "fold_time": False, "calibration": _calibration(da_qcfs=False)},
            needs_calibration=True, baseline=True),
]


def register_variant(variant: Variant) -> None:
    """Add a column to every sweep (e.g. a baseline neuron); keys must be unique."""
    if any(v.key == variant.key for v in VARIANTS):
        raise ValueError(f"sweep variant '{variant.key}' exists already")
    VARIANTS.append(variant)


def model_info(model: onnx.ModelProto, source: str) -> ModelInfo:
    """QCFS with one T̃ if every activation is QCFS, else ReLU (thresholds come from data)."""
    from snncc.compiler import analyse_activations, to_ir
    from snncc.passes._activation import QCFS, is_activation, read_activation

    graph = analyse_activations(to_ir(model))
    records = [read_activation(n) for n in graph.graph if is_activation(n)]
    if not records:
        raise SnnccError(f"{source}: no activation (ReLU, Clip, QCFS) found: nothing to sweep")
    if all(r.kind == QCFS for r in records):
        levels = sorted({r.levels for r in records})
        return ModelInfo(QCFS_KIND, levels[0] if len(levels) == 1 else None)
    return ModelInfo(RELU_KIND)


def parse_steps(text: str) -> list[int]:
    """'2,4,8' -> [2, 4, 8] (sorted, unique); SnnccError on anything else."""
    try:
        steps = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise SnnccError(f"--T {text}: expected comma-separated integers such as 2,4,8,16") from None
    if not steps or steps[0] < 1:
        raise SnnccError(f"--T {text}: time-steps must be positive integers")
    return steps


def select_variants(info: ModelInfo, keys: list[str] | None, has_calibration: bool,
                    serial_if: bool = False) -> list[Variant]:
    """The named variants, else every one that applies (the baselines only with `serial_if`)."""
    known = {v.key: v for v in VARIANTS}
    if keys:
        unknown = [k for k in keys if k not in known]
        if unknown:
            raise SnnccError(f"unknown sweep variant(s) {', '.join(unknown)}; known: {', '.join(known)}")
        chosen = [known[k] for k in keys] + [v for v in VARIANTS if serial_if and v.baseline and v.key not in keys]
    else:
        chosen = [v for v in VARIANTS if (serial_if or not v.baseline) and any(v.applies(info, T, True) for T in range(1, 65))]
    chosen = [v for v in chosen if any(v.applies(info, T, True) for T in range(1, 65))]
    if not chosen:
        raise SnnccError(f"no sweep variant applies to a {info.kind} model (asked for {', '.join(keys or [])})")
    if not has_calibration and all(v.needs_calibration for v in chosen):
        raise SnnccError(f"a {info.kind.upper()} model needs calibration data for "
                         f"{', '.join(v.key for v in chosen)} (e.g. fashion-mnist:train)")
    return chosen


@dataclasses.dataclass
class Row:
    steps: int
    variant: str
    label: str
    case: str
    top1: float | None
    top5: float | None
    agreement: float | None  # argmax agreement with the ANN
    max_logit_diff: float | None
    firing_rate: float
    sops_per_sample: float
    energy_ratio: float | None  # SNN / ANN energy estimate
    compile_s: float
    eval_s: float

    def as_dict(self) -> dict:
        return {"T": self.steps, **{k: v for k, v in dataclasses.asdict(self).items() if k != "steps"}}


@dataclasses.dataclass
class SweepResult:
    model: str
    data: str
    samples: int
    info: ModelInfo
    ann_top1: float | None
    ann_top5: float | None
    ann_macs: float
    calibration: str | None
    folded: bool
    variants: list[Variant]
    rows: list[Row] = dataclasses.field(default_factory=list)

    @property
    def metric(self) -> str:
        return "top1" if self.ann_top1 is not None else "agreement"

    def value(self, steps: int, key: str) -> float | None:
        row = next((r for r in self.rows if r.steps == steps and r.variant == key), None)
        return None if row is None else getattr(row, self.metric)

    def steps(self) -> list[int]:
        return sorted({r.steps for r in self.rows})

    def to_json(self) -> dict:
        return {
            "model": self.model, "data": self.data, "samples": self.samples,
            "model_kind": self.info.kind, "levels": self.info.levels,
            "ann": {"top1": self.ann_top1, "top5": self.ann_top5, "macs_per_sample": self.ann_macs},
            "calibration": self.calibration, "folded": self.folded,
            "variants": {v.key: v.label for v in self.variants},
            "rows": [r.as_dict() for r in self.rows],
        }

    def to_csv(self) -> str:
        out = io.StringIO()
        fields = list(self.rows[0].as_dict()) if self.rows else ["T", "variant"]
        writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: ("" if v is None else v) for k, v in row.as_dict().items()})
        return out.getvalue()

    def format_table(self) -> str:
        """T down, variants across: top-1 % (agreement % without labels); ANN on top."""
        what = "top-1 %" if self.metric == "top1" else "argmax agreement with the ANN %"
        levels = f", T̃={self.info.levels}" if self.info.levels else ""
        head = [f"{Path(self.model).name} ({self.info.kind}{levels}) on {Path(self.data).name if self.data.endswith(('.npz', '.npy')) else self.data}, "
                f"{self.samples} inputs: {what}"]
        if self.ann_top1 is not None:
            head.append(f"ANN: {100 * self.ann_top1:.2f}% top-1, {100 * self.ann_top5:.2f}% top-5")
        columns = [v.key for v in self.variants]
        width = max([8] + [len(c) for c in columns])
        lines = [f"{'T':>5}  " + "  ".join(c.rjust(width) for c in columns) + f"  {'firing rate':>11}  {'SNN/ANN energy':>14}"]
        for steps in self.steps():
            cells = []
            for key in columns:
                value = self.value(steps, key)
                cells.append(("-" if value is None else f"{100 * value:.2f}").rjust(width))
            rows = [r for r in self.rows if r.steps == steps]
            rate = f"{rows[0].firing_rate:.4f}" if rows else "-"
            energy = f"{rows[0].energy_ratio:.3f}" if rows and rows[0].energy_ratio is not None else "-"
            lines.append(f"{steps:>5}  " + "  ".join(cells) + f"  {rate:>11}  {energy:>14}")
        notes = [f"{v.key}: {v.label}" for v in self.variants]
        return "\n".join(head + lines + ["(firing rate and energy of the first column; per row in the CSV/JSON)",
                                         "variants: " + "; ".join(notes)])

    def plot_title(self) -> str:
        """Model, data and the conversion case, for the plot."""
        levels = f", T̃={self.info.levels}" if self.info.levels else ", no T̃ (thresholds from data)"
        data = Path(self.data).name if self.data.endswith((".npz", ".npy")) else self.data
        cases = ", ".join(sorted({r.case for r in self.rows if r.case}))
        folded = "folded" if self.folded else "time-expanded"
        return (f"{Path(self.model).name} ({self.info.kind.upper()}{levels}) on {data}, {self.samples} inputs\n"
                f"cases: {cases or '-'}; parallel neurons {folded}")

    def plot_series(self, key: str) -> tuple[list[int], list[float]]:
        """(every T of the sweep, the variant's value in % or NaN where it did not run): NaN breaks
        the line, so no segment is drawn across a T the variant skipped."""
        steps = self.steps()
        values = [self.value(T, key) for T in steps]
        return steps, [float("nan") if v is None else 100 * v for v in values]

    def plot(self, path: Path) -> None:
        """Accuracy (or agreement) against T, one line per variant, the ANN as a dashed line."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(9, 5.6), dpi=120)
        for variant in self.variants:
            xs, ys = self.plot_series(variant.key)
            if any(y == y for y in ys):  # some value is not NaN
                ax.plot(xs, ys, marker="o", label=variant.label)
        if self.ann_top1 is not None:
            ax.axhline(100 * self.ann_top1, color="black", linestyle="--", linewidth=1, label="ANN")
        ax.set_xscale("log", base=2)
        ax.set_xticks(self.steps(), [str(s) for s in self.steps()])
        ax.set_xlabel("time-steps T")
        ax.set_ylabel("top-1 accuracy (%)" if self.metric == "top1" else "agreement with the ANN (%)")
        ax.set_title(self.plot_title(), fontsize=11)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=10)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        plt.close(fig)
        from snncc.report import write_atomic

        write_atomic(path, buffer.getvalue())


def planned_runs(info: ModelInfo, variants: list[Variant], steps: list[int], has_calibration: bool) -> list[tuple[int, Variant]]:
    """The (T, variant) cells a sweep will compile and evaluate, in order."""
    return [(T, v) for T in steps for v in variants
            if v.applies(info, T, has_calibration) and (has_calibration or not v.needs_calibration)]


@dataclasses.dataclass(frozen=True)
class SweepInputs:
    """What every (T, variant) cell of a sweep reads: the ANN, the data and the ANN's reference run."""

    model: onnx.ModelProto
    source: str
    x: np.ndarray
    y: np.ndarray | None
    data: str
    calibration: object  # CalibrationData or None
    batch_size: int | None
    fold_time: bool
    info: ModelInfo
    reference: object  # snncc.evaluate.Reference


def run_cell(inputs: SweepInputs, steps: int, variant: Variant) -> Row:
    """Compile the ANN at T = `steps` as `variant` says and evaluate the SNN against the ANN."""
    from snncc.compiler import CompileOptions, compile_model
    from snncc.evaluate import SnnEvaluation

    fields = {"fold_time": inputs.fold_time, **variant.options(steps, inputs.info)}  # a variant may override folding
    options = CompileOptions(steps=steps, source=inputs.source, **fields,
                             calibration_data=inputs.calibration if variant.needs_calibration else None)
    started = time.perf_counter()
    compiled = compile_model(inputs.model, options).model
    compiled_at = time.perf_counter()
    report = SnnEvaluation(compiled, f"{inputs.source} T={steps} {variant.key}", inputs.x, inputs.data).run(
        inputs.y, inputs.reference, inputs.batch_size, label=f"T={steps} {variant.key}")
    done = time.perf_counter()
    return Row(steps, variant.key, variant.label, report.metadata.get("snncc.case", ""),
               report.accuracy.top1 if report.accuracy else None,
               report.accuracy.top5 if report.accuracy else None,
               report.agreement.argmax, report.agreement.max_abs_logit_diff, report.counts.firing_rate(),
               report.sops, report.snn_energy_uj / report.ann_energy_uj if report.ann_energy_uj else None,
               compiled_at - started, done - compiled_at)


# Runs cells [(T, variant)] and returns their rows in the same order, calling on_row(row) as each finishes.
CellRunner = Callable[[SweepInputs, list[tuple[int, Variant]], Callable[[Row], None]], list[Row]]


def run_cells_here(inputs: SweepInputs, cells: list[tuple[int, Variant]], on_row: Callable[[Row], None]) -> list[Row]:
    """Every cell in this process, one after the other."""
    rows = []
    for steps, variant in cells:
        rows.append(run_cell(inputs, steps, variant))
        on_row(rows[-1])
    return rows


def run_sweep(model: onnx.ModelProto, source: str, steps: list[int], x: np.ndarray, y: np.ndarray | None,
              data: str, calibration=None, variant_keys: list[str] | None = None, batch_size: int | None = None,
              fold_time: bool = True, echo: Callable[[str], None] = print, serial_if: bool = False,
              info: ModelInfo | None = None, run_cells: CellRunner = run_cells_here) -> SweepResult:
    """Compile and evaluate every applicable (T, variant); `calibration` is a CalibrationData or None.
    `echo` gets one line per finished run: 'run k of N', the result, the time taken and the ETA.
    `info`: `model_info(model, source)` when the caller has it already. `run_cells`: where the
    cells run (`run_cells_here`, or on Ray: `snncc.ray_sweep`); the rows are the same."""
    from snncc.evaluate import evaluate_ann
    from snncc.progress import ProgressLog

    info = info or model_info(model, source)
    variants = select_variants(info, variant_keys, calibration is not None, serial_if)
    runs = planned_runs(info, variants, steps, calibration is not None)
    reference = evaluate_ann(model, x, y, source, batch_size)
    result = SweepResult(source, data, len(x), info,
                         reference.accuracy.top1 if reference.accuracy else None,
                         reference.accuracy.top5 if reference.accuracy else None,
                         reference.macs, None if calibration is None else calibration.source, fold_time, variants)
    log = ProgressLog(len(runs), "sweep", "run")

    def finished(row: Row) -> None:
        shown = f"{100 * row.top1:.2f}% top-1" if row.top1 is not None else f"{100 * row.agreement:.2f}% agreement"
        echo(f"{log.step_line()}: T={row.steps} {row.variant} {shown}, firing rate {row.firing_rate:.4f}, "
             f"{row.sops_per_sample:,.0f} SOPs/sample ({row.compile_s:.1f}s compile, {row.eval_s:.1f}s eval)")

    inputs = SweepInputs(model, source, x, y, data, calibration, batch_size, fold_time, info, reference)
    result.rows.extend(run_cells(inputs, runs, finished))
    return result


def output_paths(prefix: Path, plot: bool = True) -> list[Path]:
    """PREFIX.csv, PREFIX.json and, with `plot`, PREFIX.png."""
    return [prefix.with_name(prefix.name + suffix) for suffix in (".csv", ".json", ".png")[:3 if plot else 2]]


def write_outputs(result: SweepResult, prefix: Path, plot: bool = True) -> list[Path]:
    """The files of `output_paths`; returns the paths written."""
    from snncc.report import write_atomic

    paths = output_paths(prefix, plot)
    csv_path, json_path, *png = paths
    write_atomic(csv_path, result.to_csv())
    write_atomic(json_path, json.dumps(result.to_json(), indent=2) + "\n")
    for path in png:
        result.plot(path)
    return paths


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True
