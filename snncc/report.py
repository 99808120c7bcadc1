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
            "levels": self.metadata.get("snncc.levels") or None,
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
        lines = [f"{Path(self.model).name}: T={meta.get('snncc.T', '?')}, T̃={meta.get('snncc.levels') or '-'}, "
                 f"case {meta.get('snncc.case', '?')}, neuron {meta.get('snncc.neuron', 'parallel')}"
                 f"{', folded' if meta.get('snncc.folded') == 'true' else ''}; data {_data_name(self.data)} ({self.samples} inputs)",
                 self.runtime]
        for name, acc in (("SNN", self.accuracy), ("ANN", self.ann_accuracy)):
            if acc is not None:
                lines.append(f"{name} accuracy: {100 * acc.top1:.2f}% top-1, {100 * acc.top5:.2f}% top-{acc.k5} "
                             f"({self.samples} inputs)")
        if self.agreement is not None:
            a = self.agreement
            lines.append(f"agreement with the ANN: argmax {100 * a.argmax:.2f}%, max |logit difference| "
                         f"{a.max_abs_logit_diff:.3g}, within 1e-4*max|logit| on {100 * a.relative_close:.2f}% of inputs")
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


def _data_name(spec: str) -> str:
    """A data file's name (not its folder), or the dataset spec as given."""
    path = Path(spec)
    return path.name if path.suffix.lower() in (".npz", ".npy") else spec


def _int_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _short(name: str, width: int = 40) -> str:
    return name if len(name) <= width else "..." + name[-(width - 3):]


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    def fmt(row):
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
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
