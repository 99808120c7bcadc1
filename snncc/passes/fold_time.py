"""Temporal folding: activations become `snn.SpikeCount` neurons and synaptic layers run once.

Every parallel spiking neuron reads only the T-mean of its input current, and the T-mean of a
synaptic layer's output is the layer applied to the T-means of its spike inputs. So instead of
running Conv/Gemm on T·B rows, the folded graph runs them once on rates: each neuron computes its
spike count k from the mean current and passes on the rate k·θ_post/T.

Invariant after the pass: no internal Activation node remains, every tensor keeps batch B, each
neuron's SpikeCount output equals the spike count of the expanded graph's ParallelSpike (to float
ties), and the graph outputs equal the expanded graph's T-mean outputs.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from snncc import ops
from snncc.passes._activation import broadcast_parameter, get_parameters, is_activation, tag_neuron
from snncc.passes._graph import NameGenerator, add_initializer, infer_shapes, rank_of, replace_node

PASS_NAME = "fold_time"


class FoldTimePass(ir.passes.InPlacePass):
    def __init__(self, steps: int):
        super().__init__()
        self.steps = steps

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        infer_shapes(model)
        graph = model.graph
        names = NameGenerator(graph)
        activations = [n for n in graph if is_activation(n)]
        for node in activations:
            params = get_parameters(node)
            rank = rank_of(node.inputs[0])
            base = node.name.replace("/", "_").strip("_") or "neuron"
            const = {key: add_initializer(graph, names, f"{base}.{key}", broadcast_parameter(value, rank))
                     for key, value in (("theta_pre", params.theta_pre), ("psi", params.psi),
                                        ("rate_per_spike", params.theta_post / np.float32(self.steps)))}
            count = ir.node(ops.SPIKE_COUNT, [node.inputs[0], const["theta_pre"], const["psi"]],
                            attributes={"T": self.steps}, domain=ops.DOMAIN,
                            name=names(node.name.replace("Activation", ops.SPIKE_COUNT)))
            count.outputs[0].name = names(f"{node.outputs[0].name}.spike_count")
            rate = ir.node("Mul", [count.outputs[0], const["rate_per_spike"]], name=names(f"{count.name}/rate"))
            tag_neuron(count, node, params, "folded parallel spiking neuron: spike count", PASS_NAME)
            tag_neuron(rate, node, params, "firing rate = spike count * theta_post / T", PASS_NAME)
            replace_node(graph, node, [count, rate], [rate.outputs[0]])
        model.opset_imports[ops.DOMAIN] = ops.VERSION
        return ir.passes.PassResult(model, modified=bool(activations))
