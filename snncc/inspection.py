"""`snncc inspect`: a readable summary of an ANN (what snncc finds in it) or of a compiled SNN."""

from __future__ import annotations

import onnx

from snncc import ops
from snncc.compiler import analyse_activations, describe_missing_activations, summarize_layers, to_ir
from snncc.passes._activation import is_activation, read_activation
from snncc.passes._graph import source_of
from snncc.passes.check_convertible import find_problems
from snncc.session import runtime_description


def is_snn(model: onnx.ModelProto) -> bool:
    return any(n.domain == ops.DOMAIN for n in model.graph.node)


def describe(model: onnx.ModelProto, source: str) -> str:
    return _describe_snn(model, source) if is_snn(model) else _describe_ann(model, source)


def _describe_snn(model: onnx.ModelProto, source: str) -> str:
    from snncc.cpu_layout import blocked_neurons, is_prepared

    if is_prepared(model):
        layers, blocked = blocked_neurons(model)
        return "\n".join([
            f"{source}: SNN prepared for ONNX Runtime's CPU provider (snncc prepare-cpu)",
            f"  {layers} neuron layers, {blocked} of them in NCHWc (parameters padded to whole channel blocks, "
            "folded rates fused into SpikeCount); inspect the compiled model for their parameters",
            f"  {runtime_description(model)}"])
    meta = {p.key: p.value for p in model.metadata_props}
    layers = summarize_layers(model)
    neurons = sum(layer.channels for layer in layers)
    lines = [f"{source}: SNN compiled by snncc {meta.get('snncc.version', '?')}",
             f"  T = {meta.get('snncc.T', '?')}, T̃ = {meta.get('snncc.levels', '-')}, case: {meta.get('snncc.case', '?')}",
             f"  calibration: {meta.get('snncc.calibration', '-')}",
             f"  {len(layers)} neuron layers ({neurons} per-channel parameter sets):"]
    for layer in layers:
        lines.append(f"    {layer.name}: {layer.case}, C={layer.channels}, theta_pre {layer.theta_pre[0]:.4g}..{layer.theta_pre[1]:.4g}, "
                     f"theta_post {layer.theta_post[0]:.4g}..{layer.theta_post[1]:.4g}, psi {layer.psi[0]:.4g}..{layer.psi[1]:.4g}")
    lines.append(f"  {runtime_description(model)}")
    return "\n".join(lines)


def _describe_ann(model: onnx.ModelProto, source: str) -> str:
    graph_model = analyse_activations(to_ir(model), source)
    activations = [n for n in graph_model.graph if is_activation(n)]
    lines = [f"{source}: ANN, opset {model.opset_import[0].version if model.opset_import else '?'}, "
             f"{len(model.graph.node)} nodes, {len(activations)} activations"]
    for node in activations:
        record = read_activation(node)
        detail = {"qcfs": lambda: f"θ={record.theta.min():.4g}..{record.theta.max():.4g}, T̃={record.levels}",
                  "clip": lambda: f"max={record.clip_max:.4g}", "relu": lambda: ""}[record.kind]()
        lines.append(f"  {record.kind:<5} {detail:<22} from {source_of(node)}")
    problems = find_problems(graph_model.graph)
    if not activations:
        lines.append(f"  not convertible: {describe_missing_activations(graph_model.graph)}")
    elif problems:
        lines.append(f"  not convertible: {len(problems)} node(s) between neurons are not exact on spike trains:")
        lines.extend(f"    {p}" for p in problems)
    else:
        kinds = {read_activation(n).kind for n in activations}
        needs = "" if kinds == {"qcfs"} else " (ReLU/Clip activations need calibration data)"
        lines.append(f"  convertible{needs}")
    return "\n".join(lines)
