"""Runnable ANN graphs derived from the analysed model.

After `compiler.analyse_activations`, every activation is an internal Activation node. This module
rebuilds standard-op graphs from that form, computing each activation as
- the ANN it stands for (QCFS at T̃, ReLU, ClipReLU): `original_activation`;
- ClipReLU with recorded per-channel thresholds: `clip_relu`;
- DA-QCFS at T with given θ, φ, ψ: `da_qcfs` — with the neuron parameters of a compiled SNN this
  is the quantised ANN the SNN equals (DESIGN §1, Thm 4.1).

Invariant: the graphs returned contain no internal node and run on stock ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from snncc.passes._activation import INTERNAL_DOMAIN, QCFS, RELU, Activation, NeuronParameters, get_parameters, is_activation, read_activation
from snncc.passes._graph import NameGenerator

Operand = ir.Value | np.ndarray


class OpBuilder(ir.tape.Tape):
    """`builder.Relu(x)` records a node on the tape; keyword arguments become attributes."""

    def __getattr__(self, op_type: str):
        if op_type.startswith("_"):
            raise AttributeError(op_type)
        return lambda *inputs, **attributes: self.op(op_type, inputs, attributes or None)


class ActivationBuilder:
    """Emits standard ops for one activation into a tape; arrays become initializers."""

    def __init__(self, graph: ir.Graph, names: NameGenerator, x: ir.Value, prefix: str):
        self.tape = OpBuilder(graph)
        self.graph, self.names, self.x, self.prefix = graph, names, x, prefix
        self.rank = len(x.shape) if x.shape is not None else 4

    def const(self, array: np.ndarray | float, per_channel: bool = True) -> ir.Value:
        """A float32 initializer; 1-D per-channel arrays are shaped [C, 1, ..., 1] to broadcast on axis 1."""
        array = np.asarray(array, dtype=np.float32)
        if per_channel and array.ndim == 1 and array.size > 1:
            array = array.reshape((-1,) + (1,) * max(self.rank - 2, 0))
        return self.initializer(array)

    def initializer(self, array: np.ndarray) -> ir.Value:
        name = self.names(f"{self.prefix}.const")
        return self.tape.initializer(ir.tensor(array, name=name), name=name)

    def operand(self, value: Operand) -> ir.Value:
        return value if isinstance(value, ir.Value) else self.const(value)

    def quantise(self, x: ir.Value, theta: Operand, scale: Operand, steps: int) -> ir.Value:
        """scale/steps · clip(floor((x·steps + θ/2) / θ), 0, steps)."""
        b = self.tape
        theta = self.operand(theta)
        level = b.Floor(b.Div(b.Add(b.Mul(x, self.const(float(steps))), b.Mul(theta, self.const(0.5))), theta))
        level = b.Clip(level, self.const(0.0, False), self.const(float(steps), False))
        return b.Mul(level, b.Div(self.operand(scale), self.const(float(steps))))

    def clip_relu(self, x: ir.Value, theta: Operand) -> ir.Value:
        b = self.tape
        return b.Min(b.Max(x, self.const(0.0, False)), self.operand(theta))

    def da_qcfs(self, x: ir.Value, theta: Operand, phi: Operand, psi: Operand, steps: int) -> ir.Value:
        """(θ+φ)/T · clip(floor(((x+ψ)·T + θ/2)/θ), 0, T)."""
        b = self.tape
        theta = self.operand(theta)
        return self.quantise(b.Add(x, self.operand(psi)), theta, b.Add(theta, self.operand(phi)), steps)

    def original(self, record: Activation) -> ir.Value:
        """What the ANN computes at this activation."""
        if record.kind == QCFS:
            return self.quantise(self.x, record.theta, record.theta, record.levels)
        if record.kind == RELU:
            return self.tape.Relu(self.x)
        return self.clip_relu(self.x, np.float32(record.clip_max))


# A function that emits the ops replacing one activation node and returns its output value.
EmitActivation = Callable[[ir.Node, ActivationBuilder], ir.Value]


def replace_activations(model: ir.Model, emit: EmitActivation) -> None:
    """Replace every internal Activation node by the standard ops `emit` builds for it."""
    graph = model.graph
    names = NameGenerator(graph)
    for node in [n for n in graph if is_activation(n)]:
        builder = ActivationBuilder(graph, names, node.inputs[0], node.name.replace("/", "_").strip("_") or "act")
        out = emit(node, builder)
        graph.insert_before(node, builder.tape.nodes)
        old = node.outputs[0]
        ir.convenience.replace_all_uses_with(old, out, replace_graph_outputs=True)
        out.name, old.name = old.name, names(f"{old.name}.replaced")
        out.shape, out.type = old.shape, old.type
        graph.remove(node, safe=True)
    model.opset_imports.pop(INTERNAL_DOMAIN, None)


def to_runnable_proto(model: ir.Model) -> onnx.ModelProto:
    common_passes.NameFixPass()(model)
    return ir.to_proto(model)


def copy_model(model: ir.Model) -> ir.Model:
    return ir.from_proto(ir.to_proto(model))


def original_activation(node: ir.Node, builder: ActivationBuilder) -> ir.Value:
    return builder.original(read_activation(node))


def da_qcfs_activation(steps: int) -> EmitActivation:
    """DA-QCFS with each node's neuron parameters: the ANN the compiled SNN equals."""
    def emit(node: ir.Node, builder: ActivationBuilder) -> ir.Value:
        params: NeuronParameters | None = get_parameters(node)
        if params is None:
            raise AssertionError(f"activation {node.name} has no neuron parameters")
        return builder.da_qcfs(builder.x, params.theta_pre, params.theta_post - params.theta_pre, params.psi, steps)
    return emit


# Values to output for one activation node, built with the builder before the activation is replaced.
Probe = Callable[[ir.Node, ActivationBuilder], list[ir.Value]]


def probe_model(analysed: ir.Model, emit: EmitActivation, probe: Probe) -> tuple[onnx.ModelProto, list[list[str]]]:
    """The model with activations built by `emit` and, as extra outputs, what `probe` adds for each
    activation node; returns the proto and the output names per activation, in graph order. A
    probe of an activation's output sees the value `emit` builds in its place."""
    model = copy_model(analysed)
    graph = model.graph
    names = NameGenerator(graph)
    probes = []
    for node in [n for n in graph if is_activation(n)]:
        builder = ActivationBuilder(graph, names, node.inputs[0], f"{node.name}.probe")
        probes.append(probe(node, builder))
        graph.extend(builder.tape.nodes)
    replace_activations(model, emit)
    for values in probes:
        graph.outputs.extend(v for v in values if v not in graph.outputs)
    proto = to_runnable_proto(model)
    return proto, [[v.name for v in values] for values in probes]


def quantised_ann(analysed: ir.Model, steps: int) -> onnx.ModelProto:
    """The (DA-)QCFS ANN that a compiled SNN with these neuron parameters equals exactly."""
    model = copy_model(analysed)
    replace_activations(model, da_qcfs_activation(steps))
    return to_runnable_proto(model)
