"""The evaluation report of one SNN: what `snncc eval` prints and writes as JSON.

Energy uses the usual 45 nm CMOS figures (Horowitz, ISSCC 2014; as in most SNN papers):
0.9 pJ per 32-bit float accumulate (one synaptic operation, SOP) and 4.6 pJ per 32-bit float
multiply-accumulate (MAC). SNN energy = SOPs x 0.9 pJ + MACs still run on analog values (the
first layer on the direct-encoded input) x 4.6 pJ; ANN energy = its MACs x 4.6 pJ. Memory
traffic and neuron updates are not counted.

Invariant: `to_json()` holds every number that `format_text()` prints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from snncc.errors import SnnccError
from snncc.spikes import Counts

if TYPE_CHECKING:
    from snncc.evaluate import Agreement

PJ_PER_AC = 0.9
PJ_PER_MAC = 4.6
ENERGY_SOURCE = "45 nm CMOS (Horowitz, ISSCC 2014): 0.9 pJ per accumulate (SOP), 4.6 pJ per multiply-accumulate (MAC)"


@dataclasses.dataclass(frozen=True)
class Accuracy:
    top1: float
    top5: float
    k5: int  # min(5, classes)


@dataclasses.dataclass
class EvalReport:
    model: str
    data: str
    samples: int
    metadata: dict  # snncc.T, snncc.levels, snncc.case, ...
    runtime: str
    counts: Counts
    accuracy: Accuracy | None = None
    ann: str | None = None
    ann_accuracy: Accuracy | None = None
    ann_macs: float | None = None  # per sample, counted on the ANN graph
    agreement: Agreement | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    residue: object | None = None  # evaluate.Residue: flipped neurons of a lossless SNN
    logits: object = dataclasses.field(default=None, repr=False)  # the SNN's outputs (not in the JSON)

    # -------------------------------------------------------------- derived numbers, per sample
    def per_sample(self, total: float) -> float:
        return total / self.samples if self.samples else 0.0

    @property
    def sops(self) -> float:
        return self.per_sample(self.counts.sops)

    @property
    def snn_macs(self) -> float:
        return self.per_sample(self.counts.macs)

    @property
    def reference_macs(self) -> float:
        """The ANN's MACs per sample: counted on --ann when given, else on the SNN's layers."""
        return self.ann_macs if self.ann_macs is not None else self.counts.dense_macs

    @property
    def snn_energy_uj(self) -> float:
        return (self.sops * PJ_PER_AC + self.snn_macs * PJ_PER_MAC) * 1e-6

    @property
    def ann_energy_uj(self) -> float:
        return self.reference_macs * PJ_PER_MAC * 1e-6

    def to_json(self) -> dict:
        c = self.counts
        return {
            "model": self.model,
            "data": self.data,
            "samples": self.samples,
            "T": _int_or_none(self.metadata.get("snncc.T")),
            "levels": levels_value(self.metadata),
            "case": self.metadata.get("snncc.case"),
            "neuron": self.metadata.get("snncc.neuron", "parallel"),
            "folded": self.metadata.get("snncc.folded") == "true",
            "runtime": self.runtime,
            "accuracy": dataclasses.asdict(self.accuracy) if self.accuracy else None,
            "ann": None if self.ann is None else {
                "model": self.ann,
                "accuracy": dataclasses.asdict(self.ann_accuracy) if self.ann_accuracy else None,
                "macs_per_sample": self.ann_macs,
            },
            "agreement": dataclasses.asdict(self.agreement) if self.agreement else None,
            "lossless_residue": dataclasses.asdict(self.residue) if self.residue else None,
            "neuron_layers": [
                {"name": n.name, "source": n.source, "neurons": n.neurons, "steps": n.steps,
                 "spikes_per_sample": self.per_sample(n.spikes), "firing_rate": n.firing_rate(c.samples)}
                for n in c.neurons
            ],
            "synaptic_layers": [
                {"name": s.name, "op": s.op, "input": s.input, "sops_per_sample": self.per_sample(s.sops),
                 "macs_per_sample": self.per_sample(s.macs), "dense_macs_per_sample": s.dense_macs}
                for s in c.synapses
            ],
            "totals": {
                "spikes_per_sample": self.per_sample(c.spikes),
                "firing_rate": c.firing_rate(),
                "sops_per_sample": self.sops,
                "snn_macs_per_sample": self.snn_macs,
                "ann_macs_per_sample": self.reference_macs,
                "ann_macs_source": "ann" if self.ann_macs is not None else "snn layers",
            },
            "energy": {
                "pj_per_ac": PJ_PER_AC,
                "pj_per_mac": PJ_PER_MAC,
                "source": ENERGY_SOURCE,
                "snn_uj_per_sample": self.snn_energy_uj,
                "ann_uj_per_sample": self.ann_energy_uj,
                "snn_over_ann": self.snn_energy_uj / self.ann_energy_uj if self.ann_energy_uj else None,
            },
            "notes": list(self.notes),
        }

    def to_json_text(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n"

    def format_text(self) -> str:
        """The terminal report: accuracy, agreement, per-layer tables, totals and energy."""
        c = self.counts
        meta = self.metadata
        lines = [f"{Path(self.model).name}: {model_line(meta)}; data {_data_name(self.data)} ({self.samples} inputs)",
                 self.runtime]
        for name, acc in (("SNN", self.accuracy), ("ANN", self.ann_accuracy)):
            if acc is not None:
                lines.append(f"{name} accuracy: {100 * acc.top1:.2f}% top-1, {100 * acc.top5:.2f}% top-{acc.k5} "
                             f"({self.samples} inputs)")
        if self.agreement is not None:
            a = self.agreement
            lines.append(f"agreement with the ANN: argmax {100 * a.argmax:.2f}%, max |logit difference| "
                         f"{a.max_abs_logit_diff:.3g}, within 1e-4*max|logit| on {100 * a.relative_close:.2f}% of inputs")
            if "qcfs-lossless" in meta.get("snncc.case", "").split(",") and a.relative_close < 1:
                lines.append(f"  ({exactness_note(a, self.samples, self.residue)})")
        lines.extend(f"note: {note}" for note in self.notes)
        lines.append("")
        lines.append(_table(
            ["neuron layer", "neurons", "spikes/sample", "firing rate"],
            [[_short(n.name), f"{n.neurons}", f"{self.per_sample(n.spikes):,.1f}", f"{n.firing_rate(c.samples):.4f}"]
             for n in c.neurons]
            + [["total", f"{sum(n.neurons for n in c.neurons)}", f"{self.per_sample(c.spikes):,.1f}", f"{c.firing_rate():.4f}"]],
        ))
        lines.append("(firing rate: spikes per neuron per time-step)")
        lines.append("")
        lines.append(_table(
            ["synaptic layer", "op", "input", "SOPs/sample", "MACs/sample", "ANN MACs/sample"],
            [[_short(s.name), s.op, s.input, f"{self.per_sample(s.sops):,.0f}", f"{self.per_sample(s.macs):,.0f}",
              f"{s.dense_macs:,.0f}"] for s in c.synapses]
            + [["total", "", "", f"{self.sops:,.0f}", f"{self.snn_macs:,.0f}", f"{c.dense_macs:,.0f}"]],
        ))
        source = "counted on the ANN graph" if self.ann_macs is not None else "from the SNN's layers at one step"
        lines.append("")
        lines.append(f"SOPs per sample {self.sops:,.0f} (+ {self.snn_macs:,.0f} MACs on analog inputs); "
                     f"ANN MACs per sample {self.reference_macs:,.0f} ({source})")
        ratio = self.snn_energy_uj / self.ann_energy_uj if self.ann_energy_uj else float("nan")
        lines.append(f"energy estimate per sample: SNN {self.snn_energy_uj:.3f} µJ, ANN {self.ann_energy_uj:.3f} µJ "
                     f"(SNN/ANN {ratio:.3f})")
        lines.append(f"  using {ENERGY_SOURCE}; memory access and neuron updates not counted")
        return "\n".join(lines)


LOSSLESS_RESIDUE = (
    "QCFS at T = T̃ is exact in real arithmetic; the residue is float rounding: the SNN reaches each "
    "pre-activation by other float operations than the ANN (a mean over the T steps, the firing test instead "
    "of the QCFS division chain), so one within rounding of a firing boundary (a QCFS level edge) can land on "
    "the other side: that neuron fires one spike more or less, its output moves by θ/T, and later layers follow")


def exactness_note(agreement: Agreement, samples: int, residue=None) -> str:
    """Why a lossless SNN's logits are not all within 1e-4 of the ANN's: how many inputs differ and,
    when counted (`evaluate.Residue`), how many neurons fired another number of spikes there."""
    differing = round((1 - agreement.relative_close) * samples)
    text = f"{LOSSLESS_RESIDUE}; this touched {differing} of {samples} inputs"
    if residue is not None:
        text += (f": on {residue.inputs} of them, {residue.flipped:,} of {residue.compared:,} neurons fired another "
                 "number of spikes than the ANN's level")
    return text


def levels_value(metadata: dict) -> int | list[int] | None:
    """T̃ from the model metadata: an int, a list when layers differ, None for ReLU/Clip models."""
    levels = [int(v) for v in (metadata.get("snncc.levels") or "").split(",") if v.strip()]
    return None if not levels else levels[0] if len(levels) == 1 else levels


def model_line(metadata: dict) -> str:
    """'T=4, T̃=4, case qcfs-lossless, neuron parallel[, folded]': how eval and inspect name an SNN."""
    levels = levels_value(metadata)
    levels_text = ("no T̃ (ReLU/Clip model: thresholds from data)" if levels is None
                   else f"T̃={levels if isinstance(levels, int) else ','.join(map(str, levels))}")
    folded = ", folded" if metadata.get("snncc.folded") == "true" else ""
    return (f"T={metadata.get('snncc.T', '?')}, {levels_text}, case {metadata.get('snncc.case', '?')}, "
            f"neuron {metadata.get('snncc.neuron', 'parallel')}{folded}")


def calibration_text(value: str | None) -> str:
    """The model's `snncc.calibration` metadata (JSON) as one readable line."""
    try:
        info = json.loads(value) if value else {}
    except json.JSONDecodeError:
        return value or "none"
    if not isinstance(info, dict) or not info.get("samples"):
        return "none (no calibration data)"
    parts = [f"{info['samples']} samples of {info.get('source', '?')} (sha256 {info.get('sha256', '?')})"]
    if info.get("thresholds"):
        parts.append(f"thresholds {info['thresholds']}")
    if info.get("mode"):
        parts.append(f"mode {info['mode']}")
    if info.get("da_qcfs"):
        parts.append(f"DA-QCFS calibration, momentum {info.get('momentum')}")
    elif "da_qcfs" in info and not info.get("layerwise"):
        parts.append("no DA-QCFS calibration")
    known = {"samples", "source", "sha256", "shape", "thresholds", "da_qcfs", "momentum", "done", "mode", "layerwise"}
    parts += [_calibration_item(key, info[key]) for key in sorted(info) if key not in known and info[key] is not None]
    return ", ".join(parts)


def _calibration_item(key: str, value) -> str:
    """One further entry of the calibration metadata; lists of layer names are counted, not listed."""
    if isinstance(value, list):
        return f"{key.replace('_', ' ')}: {len(value)} layer{'s' if len(value) != 1 else ''}"
    return f"{key.replace('_', ' ')} {value}"


def _data_name(spec: str) -> str:
    """A data file's name (not its folder), or the dataset spec as given."""
    path = Path(spec)
    return path.name if path.suffix.lower() in (".npz", ".npy") else spec


def format_range(low: float, high: float) -> str:
    """'2.906' for one value, '0.5265..6.416' for a range (4 significant digits)."""
    return f"{low:.4g}" if f"{low:.4g}" == f"{high:.4g}" else f"{low:.4g}..{high:.4g}"


def layer_table(layers) -> str:
    """The compile summary: one row per neuron layer, columns as wide as their widest cell."""
    header = ["neuron layer", "case", "C", "theta_pre", "theta_post", "psi", "source"]
    rows = [[layer.name, layer.case, str(layer.channels), format_range(*layer.theta_pre),
             format_range(*layer.theta_post), format_range(*layer.psi),
             layer.source if len(layer.source) <= 48 else layer.source[:45] + "..."] for layer in layers]
    return (_table(header, rows, left=(0, 1, 6)) + "\n(C: channels with their own theta and psi, 1 = one value "
            "for the layer; a..b: the range over the channels)")


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _short(name: str, width: int = 40) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]


def _table(header: list[str], rows: list[list[str]], left: tuple[int, ...] = (0,)) -> str:
    """Columns as wide as their widest cell; the `left` columns flush left, the others right."""
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    def fmt(row):
        return "  ".join(cell.ljust(w) if i in left else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows])


def write_atomic(path: str | os.PathLike, content: str | bytes) -> None:
    """Write `content` to `path` through a temporary file beside it and a rename."""
    path = Path(path)
    if path.is_dir():
        raise SnnccError(f"{path}: is a folder, not a file")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise SnnccError(f"{path}: cannot write ({error.strerror or error})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise SnnccError(f"{path}: cannot write ({error.strerror or error})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
