"""Time expansion: activations become spiking neurons (`snn.ParallelSpike`, or the serial
`snn.SerialIF` baseline) on time-major tensors.

Invariant after the pass: no internal Activation node remains; every value downstream of a
neuron and upstream of the read-out has T*B rows on its batch axis (time-major, step t owns rows
t*B..(t+1)*B-1; the axis is 0 at every neuron and moves as the dataflow analysis follows it
through Transposes, Reshapes, GatherND, ...); an analog value entering that region is tiled T
times along its batch axis (direct encoding), except where it enters a parallel neuron, which
reads it once as its mean current (constant_input = 1); every edge from the spiking region into
the read-out (and every spiking graph output) goes through the T-mean along its batch axis, so
graph outputs keep batch B and equal the ANN's outputs.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from snncc import ops
from snncc.passes._activation import broadcast_parameter, get_parameters, is_activation, tag_neuron
from snncc.passes._dataflow import Region, analyse
from snncc.passes._graph import NameGenerator, add_initializer, infer_shapes, rank_of, replace_node, source_of, tag

PASS_NAME = "expand_time"


NEURON_OPS = {"parallel": (ops.PARALLEL_SPIKE, "parallel spiking neuron"),
              "if": (ops.SERIAL_IF, "serial integrate-and-fire neuron (baseline)")}


class ExpandTimePass(ir.passes.InPlacePass):
    """`neuron` picks the neuron op: "parallel" (snn.ParallelSpike) or "if" (snn.SerialIF)."""

    def __init__(self, steps: int, neuron: str = "parallel"):
        super().__init__()
        self.steps = steps
        self.neuron_op, self.neuron_doc = NEURON_OPS[neuron]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        infer_shapes(model)  # ranks size the parameters and Tile repeats
        graph = model.graph
        flow = analyse(graph)
        names = NameGenerator(graph)
        self._graph, self._names = graph, names
        self._tiled: dict[ir.Value, ir.Value] = {}
        self._means: dict[ir.Value, ir.Value] = {}
        modified = False
        for node in list(graph):
            if is_activation(node):
                self._replace_activation(node, flow)
                modified = True
            elif flow.is_between_neurons(node):
                for index, value in enumerate(node.inputs):
                    if flow.of(value) is Region.ANALOG and value in flow.batch_axis:
                        node.replace_input_with(index, self._tile(value, flow.batch_axis[value], node))
            elif flow.is_readout(node):
                for index in flow.spiking_inputs(node):
                    value = node.inputs[index]
                    node.replace_input_with(index, self._time_mean(value, flow.batch_axis[value], node))
        for index, out in enumerate(graph.outputs):
            if flow.of(out) is Region.SPIKING:
                self._output_time_mean(index, out, flow.batch_axis[out])
        for node in graph:
            for value in node.outputs:
                if not value.is_graph_output() and flow.of(value) is Region.SPIKING:
                    value.shape = None  # batch is now T*B: let shape inference redo it
        model.opset_imports[ops.DOMAIN] = ops.VERSION
        return ir.passes.PassResult(model, modified=modified)

    def _const(self, base: str, array: np.ndarray) -> ir.Value:
        return add_initializer(self._graph, self._names, base, array)

    def _replace_activation(self, node: ir.Node, flow) -> None:
        params = get_parameters(node)
        if params is None:
            raise AssertionError(f"activation {node.name} reached time expansion without parameters")
        x = node.inputs[0]
        rank = rank_of(x)
        if rank is None:
            raise AssertionError(f"rank of {x.name} unknown after shape inference")
        attributes = {"T": self.steps}
        analog = flow.of(x) is not Region.SPIKING
        if self.neuron_op == ops.PARALLEL_SPIKE:
            # An analog x: the neuron needs only its mean current, x itself. Written out even when
            # 0: onnx.inliner (1.23) ignores a function's attribute defaults.
            attributes["constant_input"] = int(analog)
        elif analog:
            x = self._tile(x, flow.batch_axis[x], node)
        base = node.name.replace("/", "_").strip("_") or "neuron"
        inputs = [x] + [self._const(f"{base}.{key}", broadcast_parameter(getattr(params, key), rank))
                        for key in ("theta_pre", "theta_post", "psi")]
        neuron = ir.node(self.neuron_op, inputs, attributes=attributes, domain=ops.DOMAIN,
                         name=self._names(node.name.replace("Activation", self.neuron_op)))
        tag_neuron(neuron, node, params, self.neuron_doc, PASS_NAME)
        replace_node(self._graph, node, [neuron], [neuron.outputs[0]])
        flow.region[neuron.outputs[0]] = Region.SPIKING
        flow.batch_axis[neuron.outputs[0]] = 0  # check_convertible: every neuron's input has its batch on axis 0

    def _tile(self, value: ir.Value, axis: int, consumer: ir.Node) -> ir.Value:
        """Direct encoding: T copies of an analog value, time-major along its batch axis."""
        if value not in self._tiled:
            rank = rank_of(value)
            repeats = np.ones(rank, dtype=np.int64)
            repeats[axis] = self.steps
            repeats = self._const(f"{value.name}.repeats", repeats)
            tile = ir.node("Tile", [value, repeats], name=self._names(f"{value.name}/encode"))
            tile.outputs[0].name = self._names(f"{value.name}.steps")
            tag(tile, PASS_NAME, source_of(consumer), doc=f"direct encoding: the analog input repeated over T={self.steps} steps")
            self._graph.insert_before(consumer, tile)
            self._tiled[value] = tile.outputs[0]
        return self._tiled[value]

    def _mean_nodes(self, value: ir.Value, axis: int, source: str) -> list[ir.Node]:
        """Split the batch axis T*B into [T, B] and average over the steps (axis keeps its place)."""
        def const(what: str, array: list[int]) -> ir.Value:
            return self._const(f"{value.name}.{what}", np.array(array, dtype=np.int64))

        shape = ir.node("Shape", [value])
        head = ir.node("Slice", [shape.outputs[0], const("zero", [0]), const("batch_axis", [axis])])
        tail = ir.node("Slice", [shape.outputs[0], const("after_batch_axis", [axis + 1]), const("end", [rank_of(value)])])
        split_shape = ir.node("Concat", [head.outputs[0], const("steps_split", [self.steps, -1]), tail.outputs[0]],
                              attributes={"axis": 0})
        split = ir.node("Reshape", [value, split_shape.outputs[0]])
        mean = ir.node("ReduceMean", [split.outputs[0], const("time_axis", [axis])], attributes={"keepdims": 0})
        nodes = [shape, head, tail, split_shape, split, mean]
        for n in nodes:
            n.name = self._names(f"{value.name}/time_mean/{n.op_type}")
            for out in n.outputs:
                out.name = self._names(f"{value.name}.{n.op_type.lower()}")
            tag(n, PASS_NAME, source, doc=f"read-out: mean over the T={self.steps} time-steps")
        return nodes

    def _time_mean(self, value: ir.Value, axis: int, consumer: ir.Node) -> ir.Value:
        if value not in self._means:
            nodes = self._mean_nodes(value, axis, source_of(consumer))
            self._graph.insert_before(consumer, nodes)
            self._means[value] = nodes[-1].outputs[0]
        return self._means[value]

    def _output_time_mean(self, index: int, value: ir.Value, axis: int) -> None:
        """A spiking graph output: the output name now carries the T-mean."""
        nodes = self._mean_nodes(value, axis, value.name)
        self._graph.extend(nodes)
        mean = nodes[-1].outputs[0]
        old_name, shape, dtype = value.name, value.shape, value.type
        value.name = self._names(f"{old_name}.spikes")
        mean.name, mean.shape, mean.type = old_name, shape, dtype
        self._graph.outputs[index] = mean
