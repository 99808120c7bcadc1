"""Give every unnamed node a name, so that errors and `snncc.source` metadata can point at it.

ONNX does not require node names, and hand-built or converted graphs often have none; without
them, two ReLUs would both be reported (and recorded as the source of their neurons) as "Relu".

Invariant after the pass: every node of the main graph has a non-empty name, unique in the graph;
an unnamed node is named after its first output (the edge label Netron shows), existing names are
kept.
"""

from __future__ import annotations

import itertools

import onnx_ir as ir


class NameUnnamedNodesPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        used = {node.name for node in graph if node.name}
        modified = False
        for node in graph:
            if node.name:
                continue
            outputs = [v.name for v in node.outputs if v.name]
            base = outputs[0] if outputs else node.op_type
            node.name = next(name for i in itertools.count() if (name := base if i == 0 else f"{base}_{i}") not in used)
            used.add(node.name)
            modified = True
        return ir.passes.PassResult(model, modified=modified)
