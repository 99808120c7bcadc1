"""Expose requested neuron layers' spike trains as extra graph outputs.

A layer is named by its neuron node name or by any original node it replaced (`snncc.source`).
Expanded graphs output the ParallelSpike tensor itself; folded graphs rebuild the train from the
spike count with `snn.SpikeTrain`. Either way the output is time-major [T*B, ...], each element
0 or θ_post, sorted in time.

Invariant after the pass: one extra graph output `<neuron>.spikes` per requested layer.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from snncc import ops
from snncc.errors import SnnccError
from snncc.passes._graph import SOURCE_KEY, NameGenerator, add_initializer, const_array, tag

PASS_NAME = "emit_spikes"


def _neurons(graph: ir.Graph) -> list[ir.Node]:
    return [n for n in graph if ops.is_neuron(n)]


def _find(neurons: list[ir.Node], wanted: str) -> ir.Node:
    for node in neurons:
        if wanted == node.name or wanted in node.metadata_props.get(SOURCE_KEY, "").split(","):
            return node
    available = ", ".join(n.name for n in neurons)
    raise SnnccError(f"--emit-spikes {wanted}: no neuron layer of that name (neuron layers: {available})")


class EmitSpikesPass(ir.passes.InPlacePass):
    def __init__(self, wanted: list[str], steps: int):
        super().__init__()
        self.wanted, self.steps = list(wanted), steps

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        names = NameGenerator(graph)
        neurons = _neurons(graph)
        for wanted in self.wanted:
            node = _find(neurons, wanted)
            if node.op_type != ops.SPIKE_COUNT:
                spikes = node.outputs[0]
                if not spikes.is_graph_output():
                    spikes.name = names(f"{node.name}.spikes")
            else:
                rate = next(use.node for use in node.outputs[0].uses() if use.node.op_type == "Mul")
                scale = const_array(rate.inputs[1])
                theta_post = add_initializer(graph, names, f"{node.name}.theta_post", (scale * np.float32(self.steps)).astype(np.float32))
                train = ir.node(ops.SPIKE_TRAIN, [node.outputs[0], theta_post], attributes={"T": self.steps},
                                domain=ops.DOMAIN, name=names(f"{node.name}/train"))
                tag(train, PASS_NAME, node.metadata_props.get(SOURCE_KEY, node.name), doc="spike train rebuilt from the spike count")
                graph.insert_after(rate, train)
                spikes = train.outputs[0]
                spikes.name = names(f"{node.name}.spikes")
            if spikes not in graph.outputs:
                graph.outputs.append(spikes)
        return ir.passes.PassResult(model, modified=bool(self.wanted))
