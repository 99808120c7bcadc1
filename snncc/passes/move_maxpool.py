"""Move a MaxPool that feeds an activation to after the activation.

Every activation here is monotone non-decreasing and acts elementwise, so
act(MaxPool(x)) == MaxPool(act(x)). After the move the MaxPool reads the sorted spike trains of
one neuron layer, where the per-step maximum is exact, instead of the summed input current,
where it is not.

Invariant after the pass: no MaxPool output's only consumer is an activation.
"""

from __future__ import annotations

import onnx_ir as ir

from snncc.passes._activation import is_activation
from snncc.passes._graph import tag

PASS_NAME = "move_maxpool"


def _sole_activation_consumer(pool: ir.Node) -> ir.Node | None:
    out = pool.outputs[0]
    uses = list(out.uses())
    if len(pool.outputs) > 1 and pool.outputs[1].uses():
        return None  # the Indices output is used
    if len(uses) != 1 or out.is_graph_output() or not is_activation(uses[0].node):
        return None
    return uses[0].node


class MoveMaxPoolAfterActivationPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        moved = False
        for pool in list(graph):
            if pool.op_type != "MaxPool" or pool.domain != "":
                continue
            act = _sole_activation_consumer(pool)
            if act is None:
                continue
            # x -> pool -> act -> y   becomes   x -> act -> pool -> y
            x = pool.inputs[0]
            y = act.outputs[0]
            pooled_in = act.outputs[0]
            act.replace_input_with(0, x)
            graph.remove(pool, safe=False)
            graph.insert_after(act, pool)
            ir.convenience.replace_all_uses_with(y, pool.outputs[0], replace_graph_outputs=True)
            pool.replace_input_with(0, pooled_in)
            pool_out, act_out = pool.outputs[0], act.outputs[0]
            pool_out.name, act_out.name = act_out.name, f"{act_out.name}_unpooled"
            pool_out.shape, act_out.shape = act_out.shape, x.shape
            tag(pool, PASS_NAME, pool.name or "MaxPool")
            moved = True
        return ir.passes.PassResult(model, modified=moved)
