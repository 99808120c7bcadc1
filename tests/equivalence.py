"""SNN == the (DA-)QCFS ANN that snncc derives, checked neuron by neuron on ONNX Runtime.

The reference is `snncc.ann_graph.quantised_ann` on the analysed ANN (the same canonicalisation,
activation matching and MaxPool moves as compilation) whose activations carry the neuron
parameters read back from the compiled SNN (θ_pre, θ_post, ψ initializers of each
`snn.ParallelSpike`, matched through `snncc.source`). By Theorem 4.1 the SNN must equal it:

- every neuron emits binary (0 or θ_post), sorted trains;
- its spike count equals the reference level clip(floor(((z+ψ)·T + θ/2)/θ), 0, T) except where
  that level lies within float rounding of an integer (a "tie"); ties are counted and must be rare.
  The level z is computed layer by layer from the SNN's own upstream rates (the reference with its
  activation outputs fed from outside), so one tie in a deep net cannot cascade into differences
  downstream that would hide or fake a conversion error;
- outputs agree with the plain reference to 1e-4·max|output| on at least 99% of the inputs (the
  standard of tests/test_end_to_end.py).

A second, independent check guards the analysis itself: the analysed ANN with its original
activations (ReLU, Clip, QCFS at T̃) must compute what the input model computes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from snncc import ops
from snncc.ann_graph import copy_model, original_activation, quantised_ann, replace_activations, to_runnable_proto
from snncc.compiler import analyse_activations, to_ir
from snncc.passes._activation import NeuronParameters, is_activation, set_parameters
from snncc.passes._graph import CASE_KEY, SOURCE_KEY, source_of

TIE_TOLERANCE = 1e-4  # |level - integer| below this (times T) counts as a float tie
MAX_TIE_SHARE = 1e-4  # at most this share of the compared neurons may differ, all at ties


def neurons(snn: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in snn.graph.node if n.domain == ops.DOMAIN and n.op_type == ops.PARALLEL_SPIKE]


def _meta(node) -> dict[str, str]:
    return {p.key: p.value for p in node.metadata_props}


def neuron_parameters(snn: onnx.ModelProto) -> dict[str, NeuronParameters]:
    """θ_pre, θ_post, ψ (1-D) and case of every neuron, keyed by the activation it replaces."""
    inits = {t.name: onnx.numpy_helper.to_array(t).reshape(-1) for t in snn.graph.initializer}
    found = {}
    for node in neurons(snn):
        meta = _meta(node)
        theta_pre, theta_post, psi = (inits[name] for name in node.input[1:4])
        found[meta[SOURCE_KEY]] = NeuronParameters(theta_pre, theta_post, psi, meta.get(CASE_KEY, "?"))
    return found


@dataclasses.dataclass
class Reference:
    model: onnx.ModelProto  # the derived (DA-)QCFS ANN
    levels: dict[str, str]  # activation source -> name of its pre-floor level value
    outputs: dict[str, str]  # activation source -> name of its output value


def analysed(ann: onnx.ModelProto) -> ir.Model:
    return analyse_activations(to_ir(onnx.ModelProto.FromString(ann.SerializeToString())))


def derived_reference(ann: onnx.ModelProto, snn: onnx.ModelProto, steps: int) -> Reference:
    """quantised_ann on the re-analysed ANN, with the SNN's own neuron parameters."""
    model = analysed(ann)
    params = neuron_parameters(snn)
    activations = [n for n in model.graph if is_activation(n)]
    sources = [source_of(n) for n in activations]
    assert sorted(sources) == sorted(params), "the SNN's neurons and the analysed ANN's activations differ"
    for node in activations:
        set_parameters(node, params[source_of(node)])
    outputs = {source_of(n): n.outputs[0].name for n in activations}
    proto = quantised_ann(model, steps)
    producers = {out: n for n in proto.graph.node for out in n.output}
    levels = {}
    for source, name in outputs.items():
        scale = producers[name]  # Mul(Clip(Floor(level), 0, T), (θ+φ)/T)
        clip = producers[scale.input[0]]
        floor = producers[clip.input[0]]
        assert (scale.op_type, clip.op_type, floor.op_type) == ("Mul", "Clip", "Floor"), (scale, clip, floor)
        levels[source] = floor.input[0]
    return Reference(proto, levels, outputs)


def original_ann(ann: onnx.ModelProto) -> onnx.ModelProto:
    """The analysed ANN with its original activations: must compute what `ann` computes."""
    model = copy_model(analysed(ann))
    replace_activations(model, original_activation)
    return to_runnable_proto(model)


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in probe.graph.output}
    for name in names:
        if name not in existing:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return probe


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, x: np.ndarray, extra: list[str] | None = None) -> dict[str, np.ndarray]:
    session = _session(with_outputs(model, extra or []))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {session.get_inputs()[0].name: x})))


def data_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The one graph input that is not an initializer (IR < 4 models list weights as inputs)."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    assert len(inputs) == 1, [i.name for i in inputs]
    return inputs[0]


def input_shape(model: onnx.ModelProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in data_input(model).type.tensor_type.shape.dim]


def run_per_sample(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """Run a model whose batch is fixed at 1 on each sample, concatenating the outputs."""
    if input_shape(model)[0] != 1:
        return run(model, x)
    runs = [run(model, x[i:i + 1]) for i in range(len(x))]
    return {name: np.concatenate([r[name] for r in runs]) for name in runs[0]}


def assert_outputs_close(expected: dict[str, np.ndarray], got: dict[str, np.ndarray], names: list[str], share: float = 0.99):
    """Each output within 1e-4·max|output| (per input) on at least `share` of the inputs."""
    for name in names:
        a, b = expected[name], got[name]
        assert a.shape == b.shape, f"{name}: shape {b.shape}, expected {a.shape}"
        a2, b2 = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
        scale = np.abs(a2).max(axis=1)
        close = np.abs(a2 - b2).max(axis=1) <= 1e-4 * scale + 1e-30
        assert close.mean() >= share, f"output {name}: close on only {close.mean():.2%} of inputs"


def forced(reference: Reference) -> onnx.ModelProto:
    """The reference with every activation's output fed from outside (graph inputs named like
    the outputs) and the pre-floor levels as outputs: each layer's level computed from the SNN's
    own upstream rates, so that a float tie in one layer cannot propagate into the next."""
    proto = onnx.ModelProto.FromString(reference.model.SerializeToString())
    graph = proto.graph
    fed = set(reference.outputs.values())
    for node in graph.node:
        node.output[:] = [f"{name}::own" if name in fed else name for name in node.output]
    graph.input.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in sorted(fed))
    del graph.output[:]
    graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                        for name in reference.levels.values())
    del graph.value_info[:]
    return proto


@dataclasses.dataclass
class Comparison:
    compared: int = 0  # neuron outputs (over the batch) whose spike counts were compared
    ties: int = 0  # count differences at a float tie
    layers: int = 0
    cases: set[str] = dataclasses.field(default_factory=set)  # neuron cases, filled in by callers


def assert_snn_equals_reference(snn: onnx.ModelProto, reference: Reference, steps: int, x: np.ndarray,
                                output_share: float = 0.99) -> Comparison:
    """Binary sorted trains; per layer, spike counts equal the reference levels computed from the
    SNN's own upstream rates (except rare float ties); outputs agree with the plain reference."""
    snn_neurons = neurons(snn)
    params = neuron_parameters(snn)
    snn_out = run(snn, x, [n.output[0] for n in snn_neurons])
    batch = len(x)
    rates, counts, visible = {}, {}, {}
    for node in snn_neurons:
        source = _meta(node)[SOURCE_KEY]
        p = params[source]
        spikes = snn_out[node.output[0]]
        trains = spikes.reshape(steps, batch, *spikes.shape[1:])
        per_channel = (1, -1) + (1,) * (trains.ndim - 3) if p.theta_post.size > 1 else (1,)
        theta_post = np.broadcast_to(p.theta_post.reshape(per_channel), trains.shape[1:])
        binary = (trains == 0) | np.isclose(trains, theta_post, rtol=1e-6, atol=0)
        assert binary.all(), f"{node.name}: outputs other than 0 and theta_post"
        fired = trains != 0
        assert np.all(np.diff(fired.astype(np.int8), axis=0) >= 0), f"{node.name}: spike train not sorted"
        rates[reference.outputs[source]] = trains.mean(axis=0, dtype=np.float64).astype(np.float32)
        counts[source] = fired.sum(axis=0)
        visible[source] = theta_post != 0  # a silent channel's spikes carry 0
    session = _session(forced(reference))
    feeds = {i.name: rates.get(i.name, x) for i in session.get_inputs()}
    levels = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    stats = Comparison()
    for node in snn_neurons:
        source = _meta(node)[SOURCE_KEY]
        level = levels[reference.levels[source]].astype(np.float64)
        assert level.shape == counts[source].shape, f"{node.name}: reference level {level.shape}, counts {counts[source].shape}"
        expected = np.clip(np.floor(level), 0, steps)
        wrong = (counts[source] != expected) & visible[source]
        tie = np.abs(level - np.round(level)) < TIE_TOLERANCE * max(steps, 1)
        bad = wrong & ~tie
        assert not np.any(bad), (f"{node.name} ({source}): {int(np.sum(bad))} spike counts differ from the "
                                 f"reference away from a float tie (max |level - integer| "
                                 f"{np.abs(level - np.round(level))[bad].max():.3g})")
        assert np.all(np.abs(counts[source] - expected)[wrong] <= 1), f"{node.name}: a count differs by more than one"
        stats.ties += int(np.sum(wrong))
        stats.compared += int(visible[source].sum())
        stats.layers += 1
    assert stats.compared > 0
    assert stats.ties <= MAX_TIE_SHARE * stats.compared, f"{stats.ties} float-tie differences among {stats.compared} neurons"
    ref_out = run(reference.model, x)
    assert_outputs_close(ref_out, snn_out, [o.name for o in snn.graph.output], output_share)
    return stats
