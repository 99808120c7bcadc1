"""Layer-local views of the analysed model, for calibration that works neuron layer by neuron layer.

- `segment_model`: the model cut at some of its values (they become its inputs) up to some others,
  every activation built by an `emit` function, pruned to the nodes those values need;
  `prefix_model`: the same from the model's own input (so a layer early in the network costs a
  fraction of a whole pass); `neuron_inputs`: where a segment ending at an input current starts:
  the input currents of the activations feeding it (and graph inputs).
- `synaptic_subgraph`: the synaptic layers between neurons: from the outputs of the activations
  (and graph inputs) that feed one activation, without crossing another activation, to that
  activation's input current.
- `affine_producer`: the Conv / Gemm / MatMul whose output is an activation's input current,
  directly or as one term of an Add (a residual sum); `read_out_layers`: the affine layers that
  follow the last neurons and reach a graph output without another activation.

Invariant: the models returned run on stock ONNX Runtime, keep the value names of the analysed
model (an activation's output keeps its name whatever `emit` builds), and the analysed model is
never modified.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from snncc.ann_graph import EmitActivation, copy_model, replace_activations, to_runnable_proto
from snncc.passes._activation import is_activation

AFFINE_OPS = ("Conv", "Gemm", "MatMul")


def _values_by_name(graph: ir.Graph) -> dict[str, ir.Value]:
    values = {v.name: v for v in graph.inputs}
    for node in graph:
        values.update((v.name, v) for v in node.outputs)
    return values


def prefix_model(analysed: ir.Model, emit: EmitActivation, outputs: list[str]) -> onnx.ModelProto:
    """The model from its input to the values named `outputs` (in that order), activations by `emit`."""
    return segment_model(analysed, emit, None, outputs)


def segment_model(analysed: ir.Model, emit: EmitActivation, inputs: list[str] | None, outputs: list[str]) -> onnx.ModelProto:
    """The part of the model from the values named `inputs` (cut there: they become the graph
    inputs, in that order; None: the model's own inputs) to the values named `outputs` (in that
    order; none of them an input), pruned to the nodes the outputs need, its activations by `emit`
    (so activations outside the segment need not be ready for `emit`)."""
    model = copy_model(analysed)
    graph = model.graph
    values = _values_by_name(graph)
    if inputs is not None:
        cut = []
        for name in inputs:
            old = values[name]
            if old in graph.inputs:
                cut.append(old)
                continue
            fresh = ir.Value(name=f"{name}.cut", shape=old.shape, type=old.type)
            ir.convenience.replace_all_uses_with(old, fresh)
            old.name, fresh.name = f"{name}.uncut", name
            cut.append(fresh)
        graph.inputs.clear()
        graph.inputs.extend(cut)
    graph.outputs.clear()
    graph.outputs.extend(values[name] for name in outputs)
    ir.passes.common.RemoveUnusedNodesPass()(model)
    replace_activations(model, emit)
    return to_runnable_proto(model)


def synaptic_inputs(value: ir.Value) -> list[ir.Value]:
    """The activation outputs and graph inputs that `value` depends on, reached without crossing
    another activation, in the order first met walking back from it."""
    found: list[ir.Value] = []
    stack, seen = [value], set()
    while stack:
        value = stack.pop()
        if value is None or id(value) in seen or value.const_value is not None:
            continue
        seen.add(id(value))
        producer = value.producer()
        if producer is None or is_activation(producer):
            found.append(value)
        else:
            stack.extend(producer.inputs)
    return found


def neuron_inputs(value: ir.Value) -> list[ir.Value]:
    """`synaptic_inputs` with each activation output replaced by that activation's input current:
    where a model cut before the activations feeding `value` starts (`segment_model`)."""
    found = []
    for v in synaptic_inputs(value):
        v = v if v.producer() is None else v.producer().inputs[0]
        if v not in found:
            found.append(v)
    return found


def synaptic_subgraph(analysed: ir.Model, node_name: str, emit: EmitActivation) -> tuple[onnx.ModelProto, list[str], str]:
    """The synaptic layers feeding activation `node_name`: a model whose inputs are the values of
    `synaptic_inputs` (named as in the analysed model) and whose output is the activation's input
    current. Returns the model, its input names and its output name. `emit` builds the activations
    the cut removes (it only matters for their shapes)."""
    node = next(n for n in analysed.graph if n.name == node_name)
    input_names = [v.name for v in synaptic_inputs(node.inputs[0])]
    output_name = node.inputs[0].name
    return segment_model(analysed, emit, input_names, [output_name]), input_names, output_name


def affine_producer(node: ir.Node) -> ir.Node | None:
    """The Conv / Gemm / MatMul (with constant weights) whose output is the activation's input
    current, or one term of the Add that is; None if there is none."""
    producer = node.inputs[0].producer()
    candidates = [producer] if producer is None or producer.op_type != "Add" else [v.producer() for v in producer.inputs]
    for candidate in candidates:
        if candidate is not None and candidate.op_type in AFFINE_OPS and candidate.inputs[1].const_value is not None \
                and len(candidate.outputs[0].uses()) == 1:
            return candidate
    return None


def _feeds_activation(node: ir.Node) -> bool:
    """Whether any activation lies downstream of `node`."""
    stack, seen = [node], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        for output in current.outputs:
            for consumer, _ in output.uses():
                if is_activation(consumer):
                    return True
                stack.append(consumer)
    return False


def read_out_layers(analysed: ir.Model) -> list[ir.Node]:
    """Affine layers with constant weights after at least one activation and before none."""
    after_activation: set[int] = set()
    layers = []
    for node in analysed.graph:  # topological order
        if is_activation(node) or any(v is not None and v.producer() is not None and id(v.producer()) in after_activation
                                      for v in node.inputs):
            after_activation.add(id(node))
            if node.op_type in AFFINE_OPS and node.inputs[1].const_value is not None and not _feeds_activation(node):
                layers.append(node)
    return layers
