"""Drop inference no-ops: Identity and Dropout (ONNX Dropout is the identity at inference).

Invariant after the pass: no Identity and no Dropout whose mask is unused remains, except an
Identity that connects a graph input directly to a graph output.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from snncc.passes._graph import replace_node


def _mask_used(node: ir.Node) -> bool:
    mask = node.outputs[1] if len(node.outputs) > 1 else None
    return mask is not None and (bool(mask.uses()) or mask.is_graph_output())


class RemoveNoOpsPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        dropouts = [n for n in graph if n.op_type == "Dropout" and n.domain == "" and not _mask_used(n)]
        for node in dropouts:
            identity = ir.node("Identity", [node.inputs[0]], name=node.name)
            replace_node(graph, node, [identity], [identity.outputs[0]])
        modified = common_passes.IdentityEliminationPass()(model).modified
        return ir.passes.PassResult(model, modified=bool(dropouts) or modified)
