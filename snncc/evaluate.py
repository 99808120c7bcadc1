"""Running models over data sets: logits in batches, accuracy, agreement with the ANN, and the
full evaluation of a compiled SNN (`evaluate_snn`: accuracy, agreement, spike and SOP counts).

Invariant: every problem with the user's model or data is an SnnccError raised before the long
run starts (non-SNN model, an SNN given as the ANN, data that does not fit the input, labels of the
wrong length, labels outside the model's classes when its output has a static class count); labels
outside a dynamic class count are caught after the run.

Every run goes shard by shard (`shard_bounds`: fixed runs of batches) and merges the shards' counts in
row order (`merge_shards`), in-process and on Ray (snncc.ray_eval) alike, so the reports are identical.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from snncc.errors import SnnccError
from snncc.progress import progress


def check_input(session: ort.InferenceSession, x: np.ndarray, source: str) -> None:
    """Raise SnnccError unless `x` fits the model's single input (dtype float32, static dims)."""
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise SnnccError(f"{source}: the model has {len(inputs)} inputs; evaluation needs exactly one")
    expected = inputs[0].shape
    if x.dtype != np.float32:
        raise SnnccError(f"{source}: data has dtype {x.dtype}, the model wants float32")
    if len(expected) != x.ndim or any(isinstance(d, int) and d != n for d, n in zip(expected[1:], x.shape[1:])):
        raise SnnccError(f"{source}: data of shape {list(x.shape)} does not fit the model input "
                         f"'{inputs[0].name}' of shape {expected}")


def predict(session: ort.InferenceSession, x: np.ndarray, batch_size: int = 256, label: str = "running") -> np.ndarray:
    """The first output of `session` for every row of `x`, computed in batches with a progress bar."""
    name = session.get_inputs()[0].name
    starts = range(0, len(x), batch_size)
    return np.concatenate([session.run(None, {name: x[s:s + batch_size]})[0] for s in progress(starts, label)])


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    top = np.argsort(-logits, axis=1)[:, :k]
    return float(np.mean(np.any(top == labels[:, None], axis=1)))


@dataclasses.dataclass(frozen=True)
class Agreement:
    argmax: float  # fraction of inputs where SNN and ANN pick the same class
    max_abs_logit_diff: float
    relative_close: float  # fraction of inputs with |SNN - ANN| <= 1e-4 * max|ANN logit|


def agreement(snn: np.ndarray, ann: np.ndarray) -> Agreement:
    diff = np.abs(snn - ann).max(axis=1)
    scale = np.abs(ann).max(axis=1)
    return Agreement(
        argmax=float(np.mean(snn.argmax(1) == ann.argmax(1))),
        max_abs_logit_diff=float(diff.max()),
        relative_close=float(np.mean(diff <= 1e-4 * scale)),
    )


SHARD_BATCHES = 4  # batches per shard: the unit of work on Ray and of the fixed summation order everywhere


def shard_bounds(rows: int, batch_size: int) -> list[tuple[int, int]]:
    """Row ranges [start, stop) of SHARD_BATCHES batches each, tiling [0, rows)."""
    size = batch_size * SHARD_BATCHES
    return [(start, min(start + size, rows)) for start in range(0, rows, size)]


@dataclasses.dataclass
class ShardResult:
    """One shard's logits and counts (totals over its own rows only, so a retried shard counts once)."""

    start: int
    logits: np.ndarray
    counts: object  # spikes.Counts

    @property
    def rows(self) -> int:
        return len(self.logits)


def run_shard(session: ort.InferenceSession, probe, x: np.ndarray, start: int, batch_size: int,
              on_batch=None) -> ShardResult:
    """Run the probe model's `session` on the rows `x` (rows start.. of the data) batch by batch."""
    from snncc import spikes

    name = session.get_inputs()[0].name
    counts = spikes.start_counts(probe)
    logits = []
    for offset in range(0, len(x), batch_size):
        batch = np.ascontiguousarray(x[offset:offset + batch_size])
        outputs = session.run(None, {name: batch})
        logits.append(outputs[0])
        spikes.accumulate(counts, probe, outputs, len(batch))
        if on_batch is not None:
            on_batch()
    return ShardResult(start, np.concatenate(logits), counts)


def merge_shards(results: list[ShardResult]):
    """(logits in row order, counts) of shards given in row order: every total summed shard by shard in
    that order, so a run over the same shards gives the same floats wherever the shards ran."""
    expected = 0
    for result in results:
        if result.start != expected:
            raise AssertionError(f"shard at row {result.start}, expected row {expected}")
        expected += result.rows
    first = results[0].counts
    counts = dataclasses.replace(
        first, samples=sum(r.counts.samples for r in results),
        neurons=[dataclasses.replace(n, spikes=_ordered_sum(r.counts.neurons[i].spikes for r in results))
                 for i, n in enumerate(first.neurons)],
        synapses=[dataclasses.replace(c, sops=_ordered_sum(r.counts.synapses[i].sops for r in results),
                                      macs=_ordered_sum(r.counts.synapses[i].macs for r in results))
                  for i, c in enumerate(first.synapses)])
    return np.concatenate([r.logits for r in results]), counts


def _ordered_sum(values) -> float:
    """Left to right, plain float64 additions (not sum(): Python 3.12 compensates float sums)."""
    total = 0.0
    for value in values:
        total += value
    return total


def run_batches(session: ort.InferenceSession, probe, x: np.ndarray, batch_size: int, label: str):
    """(logits, counts) of the probe model's `session` over `x`, shard by shard (`shard_bounds`, merged
    by `merge_shards`, as on Ray), with a progress bar over the batches."""
    from snncc.progress import progress_counter

    bounds = shard_bounds(len(x), batch_size)
    with progress_counter(-(-len(x) // batch_size), label) as advance:
        return merge_shards([run_shard(session, probe, x[start:stop], start, batch_size, advance)
                             for start, stop in bounds])


def load_labels(spec: str, count: int) -> np.ndarray:
    """Labels from a .npy file or the array `y` of a .npz file, checked against `count` inputs."""
    path = Path(spec)
    if not path.is_file():
        raise SnnccError(f"labels file {spec} not found")
    if path.suffix.lower() not in (".npy", ".npz"):
        raise SnnccError(f"labels file {spec}: expected a .npy file or a .npz file with array 'y'")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise SnnccError(f"cannot read labels file {spec}: {error}") from None
    if path.suffix.lower() == ".npz":
        with loaded:
            if "y" not in loaded.files:
                raise SnnccError(f"labels file {spec} has no array 'y' (found: {', '.join(loaded.files) or 'none'})")
            loaded = loaded["y"]
    return check_labels(np.asarray(loaded), count, spec)


def check_labels(y: np.ndarray, count: int, source: str) -> np.ndarray:
    """`y` as int64 [count], or SnnccError saying what is wrong with it."""
    if y.ndim != 1:
        raise SnnccError(f"labels {source}: shape {list(y.shape)}, expected one class index per input [{count}]")
    if len(y) != count:
        raise SnnccError(f"labels {source}: {len(y)} labels for {count} inputs")
    if y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(y == np.round(y))):
        raise SnnccError(f"labels {source}: dtype {y.dtype}, expected integer class indices")
    return y.astype(np.int64)


def _check_label_range(y: np.ndarray, classes: int | None, source: str) -> None:
    if isinstance(classes, int) and len(y) and (y.min() < 0 or y.max() >= classes):
        raise SnnccError(f"labels {source}: values {int(y.min())}..{int(y.max())} outside the model's {classes} classes")


def _static_classes(session: ort.InferenceSession) -> int | None:
    """The class count of the first output [batch, classes] when it is static, else None."""
    shape = session.get_outputs()[0].shape
    return shape[-1] if len(shape) == 2 and isinstance(shape[-1], int) else None


def _accuracy(logits: np.ndarray, y: np.ndarray):
    from snncc.report import Accuracy

    k5 = min(5, logits.shape[1])
    return Accuracy(top_k_accuracy(logits, y), top_k_accuracy(logits, y, k5), k5)


@dataclasses.dataclass
class Reference:
    """The ANN's results on the evaluation data, computed once (e.g. for every row of a sweep)."""

    model: str
    logits: np.ndarray
    macs: float  # per sample
    accuracy: object | None = None  # report.Accuracy when labels are known


def ann_probe(model: onnx.ModelProto, source: str, x: np.ndarray, y: np.ndarray | None):
    """(probe, session) of the ANN `model`, checked against the data `x` (a first row suffices) and labels."""
    from snncc import spikes
    from snncc.session import make_session

    if spikes.neuron_nodes(model):
        raise SnnccError(f"{source}: a compiled SNN, not an ANN; compare with the ANN it was compiled from")
    probe = spikes.build_probe(model)
    session = make_session(probe.model, native=False)
    check_input(session, x, source)
    if y is not None:
        _check_label_range(y, _static_classes(session), source)
    return probe, session


def evaluate_ann(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray | None, source: str,
                 batch_size: int | None = None) -> Reference:
    """The ANN's logits, accuracy and MACs per sample (Conv/Gemm/MatMul, counted in its graph)."""
    probe, session = ann_probe(model, source, x, y)
    out, counts = run_batches(session, probe, x, batch_size or 256, f"ANN on {len(x)} inputs")
    return ann_reference(source, out, counts, y)


def ann_reference(source: str, logits: np.ndarray, counts, y: np.ndarray | None) -> Reference:
    """The ANN's Reference from its logits and merged counts."""
    if y is not None:
        _check_label_range(y, logits.shape[1], source)
    macs = counts.macs / counts.samples if counts.samples else 0.0
    return Reference(source, logits, macs, _accuracy(logits, y) if y is not None else None)


def require_snn(model: onnx.ModelProto, source: str) -> None:
    from snncc import spikes
    from snncc.cpu_layout import is_prepared

    if not spikes.neuron_nodes(model):
        raise SnnccError(f"{source}: not a spiking model (no snn.ParallelSpike, SerialIF or SpikeCount node); "
                         f"compile it first: snncc compile {source} --T 4")
    if is_prepared(model):
        raise SnnccError(f"{source}: prepared for ONNX Runtime's CPU provider (snncc prepare-cpu), where neurons "
                         "hold blocked tensors and rates; evaluate the compiled model it was prepared from")


class SnnEvaluation:
    """A compiled SNN ready to run: probes built, session made, data checked (all before any long run)."""

    def __init__(self, model: onnx.ModelProto, source: str, x: np.ndarray, data: str, native: bool | None = None):
        from snncc import spikes
        from snncc.session import make_session

        require_snn(model, source)
        self.model, self.source, self.x, self.data = model, source, x, data
        self.probe = spikes.build_probe(model)
        self.session = make_session(self.probe.model, native=native)
        check_input(self.session, x, f"{source} with --data {data}")

    def default_batch_size(self) -> int:
        """256 inputs, fewer for time-expanded graphs: at most ~2048 rows (T x batch) per run."""
        from snncc import spikes

        neurons = spikes.neuron_nodes(self.model)
        expanded = [n for n in neurons if n.op_type in spikes.TRAIN_NEURONS]
        steps = max((int(a.i) for n in expanded for a in n.attribute if a.name == "T"), default=1)
        return max(1, min(256, 2048 // steps))

    def run(self, y: np.ndarray | None = None, reference: Reference | None = None, batch_size: int | None = None,
            label: str | None = None):
        """Accuracy (with labels), agreement with `reference`, spike, SOP and MAC counts: a report.EvalReport."""
        x = self.x
        batch_size = batch_size or self.default_batch_size()
        if reference is not None and len(reference.logits) != len(x):
            raise AssertionError("reference logits were computed on other data")
        if y is not None:  # before the long run when the class count is static, else after it
            _check_label_range(y, _static_classes(self.session), self.data)
        out, counts = run_batches(self.session, self.probe, x, batch_size, label or f"SNN on {len(x)} inputs")
        return self.report(out, counts, y, reference)

    def report(self, out: np.ndarray, counts, y: np.ndarray | None = None, reference: Reference | None = None):
        """The report.EvalReport from the SNN's logits and merged counts over all the rows."""
        from snncc.report import EvalReport
        from snncc.session import runtime_description

        report = EvalReport(model=self.source, data=self.data, samples=len(out),
                            metadata={p.key: p.value for p in self.model.metadata_props},
                            runtime=runtime_description(self.model), counts=counts, logits=out)
        if y is not None:
            _check_label_range(y, out.shape[1], self.data)
            report.accuracy = _accuracy(out, y)
        else:
            report.notes.append("no labels (no array y in --data, no --labels): top-1/top-5 omitted")
        if reference is not None:
            if reference.logits.shape != out.shape:
                raise SnnccError(f"{self.source} outputs {list(out.shape[1:])} per input but the ANN {reference.model} "
                                 f"outputs {list(reference.logits.shape[1:])}: not the same network")
            report.ann, report.ann_accuracy, report.ann_macs = reference.model, reference.accuracy, reference.macs
            report.agreement = agreement(out, reference.logits)
        stopped = self.probe.stopped
        if stopped:
            report.notes.append("events not followed past: " + ", ".join(stopped[:5])
                                + (f" and {len(stopped) - 5} more" if len(stopped) > 5 else ""))
        return report


@dataclasses.dataclass(frozen=True)
class Residue:
    """Where a lossless SNN's logits differ from the ANN's: neurons whose spike count differs from
    the ANN's QCFS level, on the inputs whose logits differ."""

    inputs: int  # inputs examined (those whose logits differ, at most MAX_RESIDUE_INPUTS)
    flipped: int  # neurons (over those inputs) firing a different number of spikes than the ANN's level
    compared: int  # neurons compared


MAX_RESIDUE_INPUTS = 256


def lossless_residue(snn: onnx.ModelProto, ann: onnx.ModelProto, x: np.ndarray, snn_logits: np.ndarray,
                     ann_logits: np.ndarray) -> Residue | None:
    """Count, on the inputs whose logits differ by more than 1e-4·max|ANN logit|, the neurons of each
    scalar-θ layer whose spike count k differs from the ANN's QCFS level round(a·T/θ) at that place
    (a: the ANN's activation output); None when no input differs."""
    from snncc import ops
    from snncc.compiler import summarize_layers
    from snncc.session import make_session

    diff = np.abs(snn_logits - ann_logits).max(axis=1)
    rows = np.flatnonzero(diff > 1e-4 * np.abs(ann_logits).max(axis=1))[:MAX_RESIDUE_INPUTS]
    if not len(rows):
        return None
    ann_outputs = {n.name: n.output[0] for n in ann.graph.node}
    neurons = [n for n in snn.graph.node if ops.is_neuron(n)]
    pairs = []  # (SNN neuron output, its steps, ANN activation output, θ)
    for node, layer in zip(neurons, summarize_layers(snn)):
        last_source = layer.source.split(",")[-1]
        if layer.theta_post[0] == layer.theta_post[1] and last_source in ann_outputs:
            steps = next(a.i for a in node.attribute if a.name == "T")
            pairs.append((node.output[0], node.op_type != ops.SPIKE_COUNT, steps, ann_outputs[last_source],
                          layer.theta_post[0]))
    batch = np.ascontiguousarray(x[rows])

    def outputs(model, names):
        extended = onnx.ModelProto()
        extended.CopyFrom(model)
        present = {o.name for o in extended.graph.output}
        extended.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                                     for n in names if n not in present)
        session = make_session(extended, native=None if model is snn else False)
        return dict(zip([o.name for o in session.get_outputs()],
                        session.run(None, {session.get_inputs()[0].name: batch})))

    spiking = outputs(snn, [p[0] for p in pairs])
    analog = outputs(ann, [p[3] for p in pairs])
    flipped = compared = 0
    for name, is_train, steps, ann_name, theta in pairs:
        counts = spiking[name]
        if is_train:  # [T·B, ...] trains -> spikes per neuron
            counts = (counts.reshape(steps, len(rows), *counts.shape[1:]) != 0).sum(axis=0)
        levels = np.round(analog[ann_name] * steps / theta)
        if counts.shape == levels.shape:
            flipped += int(np.count_nonzero(counts != levels))
            compared += counts.size
    return Residue(len(rows), flipped, compared)


def evaluate_snn(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray | None, source: str, data: str,
                 reference: Reference | None = None, batch_size: int | None = None, label: str | None = None):
    """SnnEvaluation(...).run(...) in one call."""
    return SnnEvaluation(model, source, x, data).run(y, reference, batch_size, label)
