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
"""

from __future__ import annotations

import dataclasses
import enum

import onnx_ir as ir

from snncc.passes._activation import is_activation


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


def analyse(graph: ir.Graph) -> Dataflow:
    """Classify every value and find the nodes that feed a neuron; the graph is topologically sorted.

    Read-out nodes produce ANALOG values: they run on the T-mean of their spiking inputs.
    """
    nodes = list(graph)
    feeds: set[ir.Node] = set()
    for node in reversed(nodes):
        if is_activation(node) or any(use.node in feeds for out in node.outputs for use in out.uses()):
            feeds.add(node)
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
    return Dataflow(region, feeds)
