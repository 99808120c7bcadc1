"""Where each value lives in the spiking graph.

- CONSTANT: depends on no graph input (weights, folded shapes);
- SHAPE:    computed from tensor shapes only (Shape, Size and arithmetic on them): metadata,
            not data, so it never makes a node spiking;
- ANALOG:   depends on graph inputs but on no neuron: batch B, the same at every time-step;
- SPIKING:  depends on a neuron output: batch T*B, time-major.

A node is *between neurons* when it reads a SPIKING value and a neuron lies downstream of it;
such nodes must compute something exact on spike trains (see check_convertible). A node that
reads SPIKING values but has no neuron downstream belongs to the read-out: it runs on the
T-mean, where every op is exact.

Besides the region, the analysis follows each data value's batch axis (T·B rows, time-major, in the
spiking graph; B elsewhere) from the graph inputs (axis 0) through every op's rule in _batch_axis,
and the contents of small integer shape computations element by element. Where a rule finds that
an op mixes the rows of its batch axis, the node's reason is kept and its outputs carry no axis.
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np
import onnx_ir as ir

from snncc.passes import _batch_axis, _shape_contents
from snncc.passes._activation import is_activation
from snncc.passes._batch_axis import FixedBatch, LostUpstream, NotExact, Site


class Region(enum.Enum):
    CONSTANT = 0
    SHAPE = 1
    ANALOG = 2
    SPIKING = 3


_SHAPE_OPS = frozenset({"Shape", "Size"})


@dataclasses.dataclass
class Dataflow:
    region: dict[ir.Value, Region]
    feeds_neuron: set[ir.Node]  # nodes with a neuron downstream (activations included)
    batch_axis: dict[ir.Value, int] = dataclasses.field(default_factory=dict)  # values that carry a batch
    elements: dict[ir.Value, object] = dataclasses.field(default_factory=dict)  # tracked integer contents
    mixes_batch: dict[ir.Node, str] = dataclasses.field(default_factory=dict)  # why a node loses the batch axis
    fixed_batch: set[ir.Node] = dataclasses.field(default_factory=set)  # run at the exported batch size only
    lost_upstream: set[ir.Node] = dataclasses.field(default_factory=set)  # an input lost its axis before
    bad_batch_read: dict[ir.Node, str] = dataclasses.field(default_factory=dict)  # uses T·B where B is meant, or the reverse
    batch_entry: dict[ir.Node, int] = dataclasses.field(default_factory=dict)  # Reshape: target entry of the batch

    def of(self, value: ir.Value | None) -> Region:
        if value is None:
            return Region.CONSTANT
        return self.region.get(value, Region.CONSTANT)

    def spiking_inputs(self, node: ir.Node) -> list[int]:
        return [i for i, v in enumerate(node.inputs) if self.of(v) is Region.SPIKING]

    def is_between_neurons(self, node: ir.Node) -> bool:
        return not is_activation(node) and bool(self.spiking_inputs(node)) and node in self.feeds_neuron

    def is_readout(self, node: ir.Node) -> bool:
        return not is_activation(node) and bool(self.spiking_inputs(node)) and node not in self.feeds_neuron


def analyse(graph: ir.Graph, static_batch: int | None = None) -> Dataflow:
    """Classify every value, find the nodes that feed a neuron and follow the batch axis; the graph
    is topologically sorted. `static_batch`: the fixed batch size of a batch-1 export, whose
    Reshape targets then hold it as a literal (make_batch_dynamic).

    Read-out nodes produce ANALOG values: they run on the T-mean of their spiking inputs.
    """
    nodes = list(graph)
    feeds: set[ir.Node] = set()
    for node in reversed(nodes):
        if is_activation(node) or any(use.node in feeds for out in node.outputs for use in out.uses()):
            feeds.add(node)
    flow = Dataflow(_regions(graph, nodes, feeds), feeds)
    for value in graph.inputs:
        if value.shape is None or len(value.shape):
            flow.batch_axis[value] = 0
    for node in nodes:
        _follow_batch_axis(flow, node, static_batch)
    return flow


def _regions(graph: ir.Graph, nodes: list[ir.Node], feeds: set[ir.Node]) -> dict[ir.Value, Region]:
    """The region of every node output (and graph input), `nodes` in topological order; a value
    produced by no node and not a graph input (an initializer) is CONSTANT."""
    region: dict[ir.Value, Region] = {v: Region.ANALOG for v in graph.inputs}
    for node in nodes:
        if is_activation(node):
            kind = Region.SPIKING
        elif node.op_type in _SHAPE_OPS and node.domain == "":
            kind = Region.SHAPE
        else:
            kind = max((region.get(v, Region.CONSTANT) for v in node.inputs if v is not None),
                       key=lambda r: r.value, default=Region.CONSTANT)
            if kind is Region.SPIKING and node not in feeds:
                kind = Region.ANALOG
        for out in node.outputs:
            region[out] = kind
    return region


def shape_or_constant_values(graph: ir.Graph) -> set[ir.Value]:
    """The node outputs computed only from constants and tensor shapes (CONSTANT or SHAPE): not data."""
    return {value for value, kind in _regions(graph, list(graph), set()).items()
            if kind in (Region.CONSTANT, Region.SHAPE)}


def _follow_batch_axis(flow: Dataflow, node: ir.Node, static_batch: int | None) -> None:
    # a read-out node reads the T-mean of its spiking inputs: batch B, as on the analog side
    spiking = [flow.of(v) is Region.SPIKING and not flow.is_readout(node) for v in node.inputs]
    elements = [_contents(flow, v) for v in node.inputs]
    axes = [flow.batch_axis.get(v) if v is not None else None for v in node.inputs]
    if is_activation(node):
        axis = 0 if axes[0] is not None else None  # the neuron's output is time-major on axis 0
    else:
        site = Site(node, axes, elements, static_batch)
        if node.outputs and flow.of(node.outputs[0]) not in (Region.SHAPE, Region.CONSTANT):
            try:
                _check_batch_reads(node, elements, spiking)
            except NotExact as reason:
                flow.bad_batch_read[node] = str(reason)
        try:
            axis = _batch_axis.rule_of(node).layout(site)
        except LostUpstream:
            flow.lost_upstream.add(node)
            axis = None
        except NotExact as reason:
            flow.mixes_batch[node] = str(reason)
            if isinstance(reason, FixedBatch):
                flow.fixed_batch.add(node)
            axis = None
        if site.batch_entry is not None:
            flow.batch_entry[node] = site.batch_entry
    for out in node.outputs:
        if axis is not None:
            flow.batch_axis[out] = axis
    if axis is None and node.outputs and flow.of(node.outputs[0]) in (Region.SHAPE, Region.CONSTANT):
        _track_contents(flow, node, elements, axes, spiking)


def _track_contents(flow: Dataflow, node: ir.Node, elements: list, axes: list, spiking: list[bool]) -> None:
    """Element by element where the op allows; else, for a shape computation, one marker saying it
    may hold the batch size (T·B if it reads a spiking tensor)."""
    contents = _shape_contents.shape_elements(node, elements, axes, spiking)
    if contents is not None and contents.size <= _shape_contents.MAX_TRACKED and len(node.outputs) == 1:
        flow.elements[node.outputs[0]] = contents
    elif flow.of(node.outputs[0]) is Region.SHAPE:
        from_spikes = any(spiking) or any(_shape_contents.read_from_spikes(e) for c in elements if c is not None
                                          for e in c.reshape(-1))
        for out in node.outputs:
            flow.elements[out] = np.array(_shape_contents.Unknown(True, from_spikes), dtype=object)


def _contents(flow: Dataflow, value: ir.Value | None):
    constant = _shape_contents.constant_elements(value)
    return constant if constant is not None or value is None else flow.elements.get(value)


def _check_batch_reads(node: ir.Node, elements: list, spiking: list[bool]) -> None:
    """A data op may use a read batch size only as the batch entry of a target shape or size, and
    only one read from a tensor of its own kind (T·B from spiking values, B from analog ones)."""
    data_spiking = bool(node.inputs) and spiking[0]
    for index, contents in enumerate(elements):
        if contents is None or not any(_shape_contents.depends_on_batch(e) for e in contents.reshape(-1)):
            continue
        if (node.op_type, index) not in _batch_axis.SHAPE_OPERANDS:
            if any(_shape_contents.read_from_spikes(e) for e in contents.reshape(-1)):
                raise NotExact("it uses the batch size, which is T·B in the spiking graph")
            continue
        if any(_shape_contents.read_from_spikes(e) != data_spiking for e in contents.reshape(-1)
               if _shape_contents.depends_on_batch(e)):
            raise NotExact("its target shape reads the batch size of a tensor on the other side of the "
                           "neurons (T·B there, B here, or the reverse)")
