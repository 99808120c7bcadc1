"""Unit tests of each pass on small inline graphs, matching and non-matching cases."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from snncc.errors import ConversionError, SnnccError
from snncc.passes._activation import is_activation, read_activation
from snncc.passes.check_convertible import CheckConvertiblePass, find_problems
from snncc.passes.convert_opset import ConvertOpsetPass, from_proto_at
from snncc.passes.fold_batchnorm import FoldBatchNormPass
from snncc.passes.fold_constants import FoldConstantsPass
from snncc.passes.freeze_initializer_inputs import FreezeInitializerInputsPass
from snncc.passes.make_batch_dynamic import MakeBatchDynamicPass
from snncc.passes.match_activations import MatchActivationsPass
from snncc.passes.move_maxpool import MoveMaxPoolAfterActivationPass
from snncc.passes.remove_no_ops import RemoveNoOpsPass
from tests import graphs

RNG = np.random.default_rng(0)
X = RNG.normal(size=(2, 3, 6, 6)).astype(np.float32)


def _activations(model: ir.Model):
    return [read_activation(n) for n in model.graph if is_activation(n)]


# --- convert_opset -------------------------------------------------------------------------

def test_convert_opset_turns_clip_attributes_into_inputs():
    text = "g (float[N,3,6,6] x) => (float[N,3,6,6] y) { y = Clip <min: float = 0.0, max: float = 6.0> (x) }"
    model = graphs.ir_model(text, opset=10)
    assert ConvertOpsetPass(21)(model).modified
    assert model.opset_imports[""] == 21
    clip = next(n for n in model.graph if n.op_type == "Clip")
    assert len(clip.inputs) == 3 and not clip.attributes
    assert np.allclose(graphs.run(model, x=X)[0], np.clip(X, 0, 6))


@pytest.mark.parametrize("opset", [6, 22])
def test_convert_opset_rejects_unsupported_versions(opset):
    model = graphs.ir_model("g (float[N,3] x) => (float[N,3] y) { y = Relu (x) }", opset=opset)
    with pytest.raises(SnnccError, match=f"opset {opset}"):
        ConvertOpsetPass(21)(model)


def test_convert_opset_keeps_target_version_unchanged():
    model = graphs.ir_model("g (float[N,3] x) => (float[N,3] y) { y = Relu (x) }")
    assert not ConvertOpsetPass(21)(model).modified


def test_converting_an_old_opset_proto_on_the_way_in_equals_the_pass():
    """from_proto_at converts on the proto without its weights: the same graph, weights and opset
    imports as ConvertOpsetPass on the IR model, and the same outputs."""
    text = """g (float[N,3,6,6] x) => (float[N,16,6,6] y) {
        c = Conv <pads = [1, 1, 1, 1]> (x, w)
        s = Unsqueeze <axes = [1, 2]> (scale)
        m = Mul (c, s)
        y = Clip <min: float = 0.0, max: float = 6.0> (m)
    }"""
    proto = graphs.model(text, opset=9, extra_opsets={"ai.onnx.ml": 1})  # an unused import, dropped by both
    weight = RNG.normal(size=(16, 3, 3, 3)).astype(np.float32)  # 1.7 kB: left out of the converted copy
    proto.graph.initializer.extend([onnx.numpy_helper.from_array(weight, "w"),
                                    onnx.numpy_helper.from_array(np.linspace(0.5, 2, 16, dtype=np.float32), "scale")])
    via_pass = ir.from_proto(proto)
    ConvertOpsetPass(21)(via_pass)
    direct = from_proto_at(proto, 21)
    assert direct.opset_imports == {"": 21}
    ConvertOpsetPass(21)(direct)  # as canonicalize runs it: only the IR version is left to raise
    a, b = ir.to_proto(via_pass), ir.to_proto(direct)
    assert list(a.graph.node) == list(b.graph.node) and list(a.opset_import) == list(b.opset_import)
    assert a.ir_version == b.ir_version
    assert {t.name: t for t in a.graph.initializer} == {t.name: t for t in b.graph.initializer}
    assert list(a.graph.input) == list(b.graph.input)
    assert [n.op_type for n in b.graph.node if n.op_type != "Constant"] == ["Conv", "Unsqueeze", "Mul", "Clip"]
    assert len(next(n for n in b.graph.node if n.op_type == "Unsqueeze").input) == 2  # axes became an input
    out = graphs.run(b, x=X)[0]
    assert np.array_equal(out, graphs.run(a, x=X)[0])
    assert np.array_equal(out, graphs.run(proto, x=X)[0])


# --- freeze_initializer_inputs, fold_constants ----------------------------------------------

def test_initializers_listed_as_inputs_become_constants():
    proto = graphs.model("g (float[N,3] x, float[3] b) => (float[N,3] y) <float[3] b = {1.0, 2.0, 3.0}> { y = Add (x, b) }")
    model = ir.from_proto(proto)
    assert FreezeInitializerInputsPass()(model).modified
    assert [v.name for v in model.graph.inputs] == ["x"]


def test_same_padding_computed_from_shapes_folds_to_constant():
    text = """
    g (float[N,3,6,6] x) => (float[N,3,8,8] y) {
        shape = Shape (x)
        spatial = Slice (shape, starts, ends)
        one = Constant <value_ints: ints = [1, 1]> ()
        margin = Sub (spatial, spatial)
        pad_hw = Add (margin, one)
        zeros = Constant <value_ints: ints = [0, 0]> ()
        pads = Concat <axis: int = 0> (zeros, pad_hw, zeros, pad_hw)
        y = Pad (x, pads)
    }"""
    text = text.replace("g (float[N,3,6,6] x)", "g (float[N,3,6,6] x)").replace(
        "shape = Shape (x)", "starts = Constant <value_ints: ints = [2]> ()\n ends = Constant <value_ints: ints = [4]> ()\n shape = Shape (x)")
    model = graphs.ir_model(text)
    FoldConstantsPass()(model)
    assert graphs.op_types(model) == ["Pad"]
    assert np.allclose(graphs.run(model, x=X)[0], np.pad(X, ((0, 0), (0, 0), (1, 1), (1, 1))))


def test_small_constant_of_shape_folds_and_a_big_one_stays():
    """efficientnet_pytorch's pads: Concat(const, ConstantOfShape([4]) zeros) -> Pad. A zero tensor
    above the folding limit is not materialised."""
    from snncc.passes.fold_constants import MAX_FOLDED_ELEMENTS

    text = f"""g (float[N,3,6,6] x) => (float[N,3,7,7] y, float[{MAX_FOLDED_ELEMENTS + 1}] big) {{
        four = Constant <value_ints: ints = [4]> ()
        zeros = ConstantOfShape <value: tensor = int64[1] {{0}}> (four)
        hw = Constant <value_ints: ints = [0, 0, 1, 1]> ()
        pads = Concat <axis: int = 0> (zeros, hw)
        order = Constant <value_ints: ints = [0, 1, 4, 5, 2, 3, 6, 7]> ()
        nchw = Gather (pads, order)
        y = Pad (x, nchw)
        n = Constant <value_ints: ints = [{MAX_FOLDED_ELEMENTS + 1}]> ()
        big = ConstantOfShape (n)
    }}"""
    model = graphs.ir_model(text)
    FoldConstantsPass()(model)
    assert [op for op in graphs.op_types(model) if op != "Constant"] == ["Pad", "ConstantOfShape"]
    y, big = graphs.run(model, x=X)
    assert np.allclose(y, np.pad(X, ((0, 0), (0, 0), (0, 1), (0, 1))))
    assert big.shape == (MAX_FOLDED_ELEMENTS + 1,) and not big.any()


# --- remove_no_ops ---------------------------------------------------------------------------

def test_dropout_and_identity_are_removed_even_before_an_output():
    text = """
    g (float[N,3,6,6] x) => (float[N,3,6,6] y) {
        a = Identity (x)
        b = Relu (a)
        y = Dropout (b)
    }"""
    model = graphs.ir_model(text)
    assert RemoveNoOpsPass()(model).modified
    assert graphs.op_types(model) == ["Relu"]
    assert model.graph.outputs[0].name == "y"
    assert np.allclose(graphs.run(model, x=X)[0], np.maximum(X, 0))


def test_dropout_with_used_mask_stays():
    text = """
    g (float[N,3] x) => (float[N,3] y, bool[N,3] mask) { y, mask = Dropout (x) }"""
    model = graphs.ir_model(text)
    RemoveNoOpsPass()(model)
    assert graphs.op_types(model) == ["Dropout"]


# --- fold_batchnorm --------------------------------------------------------------------------

def _floats(shape, seed=1) -> str:
    values = np.random.default_rng(seed).normal(size=shape)
    return f"float[{','.join(map(str, shape))}] " + "{" + ", ".join(f"{v:.4f}" for v in values.reshape(-1)) + "}"


BN = ("<float[3] s = {1.5, -0.5, 2.0}, float[3] b = {0.1, 0.2, -0.3}, float[3] mu = {0.5, -1.0, 0.0}, "
      f"float[3] var = {{1.0, 2.0, 0.5}}, {_floats((3, 3, 3, 3)).replace('] ', '] w = ', 1)}>")


def _bn_model(text):
    return graphs.ir_model(text)


def test_batchnorm_after_conv_is_folded_exactly():
    text = f"""g (float[N,3,6,6] x) => (float[N,3,6,6] y) {BN} {{
        c = Conv <pads: ints = [1,1,1,1]> (x, w)
        y = BatchNormalization (c, s, b, mu, var)
    }}"""
    model = _bn_model(text)
    before = graphs.run(model, x=X)[0]
    assert FoldBatchNormPass()(model).modified
    assert graphs.op_types(model) == ["Conv"]
    assert np.allclose(graphs.run(model, x=X)[0], before, atol=1e-5)


def test_batchnorm_after_activation_stays():
    text = f"""g (float[N,3,6,6] x) => (float[N,3,6,6] y) {BN} {{
        c = Conv <pads: ints = [1,1,1,1]> (x, w)
        r = Relu (c)
        y = BatchNormalization (r, s, b, mu, var)
    }}"""
    model = _bn_model(text)
    assert not FoldBatchNormPass()(model).modified
    assert graphs.op_types(model) == ["Conv", "Relu", "BatchNormalization"]


# --- make_batch_dynamic ----------------------------------------------------------------------

def test_static_batch_becomes_dynamic_and_reshape_copies_batch():
    text = """g (float[1,3,6,6] x) => (float[1,108] y) {
        shape = Constant <value_ints: ints = [1, 108]> ()
        y = Reshape (x, shape)
    }"""
    model = graphs.ir_model(text)
    FoldConstantsPass()(model)
    assert MakeBatchDynamicPass()(model).modified
    assert model.graph.inputs[0].shape[0] == ir.SymbolicDim("N")
    (y,) = graphs.run(model, x=X)
    assert y.shape == (2, 108)


def test_allowzero_reshape_of_a_batch_1_export_becomes_dynamic():
    """The dynamo exporter without dynamic_shapes: channel shuffle as Reshape [1, 2, 2, 6, 6] with allowzero=1."""
    text = """g (float[1,4,6,6] x) => (float[1,4,6,6] y) {
        split = Constant <value_ints: ints = [1, 2, 2, 6, 6]> ()
        merge = Constant <value_ints: ints = [1, 4, 6, 6]> ()
        g = Reshape <allowzero: int = 1> (x, split)
        t = Transpose <perm: ints = [0, 2, 1, 3, 4]> (g)
        y = Reshape <allowzero: int = 1> (t, merge)
    }"""
    model = graphs.ir_model(text)
    FoldConstantsPass()(model)
    assert MakeBatchDynamicPass()(model).modified
    x = RNG.normal(size=(3, 4, 6, 6)).astype(np.float32)
    (y,) = graphs.run(model, x=x)
    expected = x.reshape(3, 2, 2, 6, 6).transpose(0, 2, 1, 3, 4).reshape(3, 4, 6, 6)
    assert np.array_equal(y, expected)


def test_reshape_that_drops_the_static_batch_is_refused_by_name():
    text = """g (float[1,4,6,6] x) => (float[4,36] y) {
        t = Transpose <perm: ints = [1, 0, 2, 3]> (x)
        target = Constant <value_ints: ints = [4, 36]> ()
        y = Reshape (t, target)
    }"""
    model = graphs.ir_model(text)
    FoldConstantsPass()(model)
    for node in model.graph:
        node.name = node.outputs[0].name
    with pytest.raises(SnnccError, match="^net.onnx: node 'y' \\(Reshape\\) hard-codes the exported batch size 1"):
        MakeBatchDynamicPass("net.onnx")(model)


def test_constant_part_with_the_static_batch_is_refused_by_name():
    """A constant of batch 1 concatenated to the data would make calibration (batches) fail in ONNX Runtime."""
    model = graphs.ir_model("""g (float[1,3,6,6] x) => (float[1,4,6,6] y) <float[1,1,6,6] c = {%s}> {
        y = Concat <axis: int = 1> (x, c)
    }""" % ",".join(["0.5"] * 36))
    FoldConstantsPass()(model)
    model.graph.node(0).name = "y"
    with pytest.raises(SnnccError, match="^net.onnx: node 'y' \\(Concat\\).*fixed batch size"):
        MakeBatchDynamicPass("net.onnx")(model)


# --- match_activations -----------------------------------------------------------------------

def _qcfs_text(first="Div (x, theta)", last="Div (f, levels)", mul_order="Mul (c, levels)", theta="4.0", levels="4.0",
               hi="1.0", half="0.5", out_theta=None):
    out_theta = out_theta or theta
    return f"""g (float[N,3,6,6] x) => (float[N,3,6,6] y)
    <float theta = {{{theta}}}, float inv_theta = {{{1 / float(theta)}}}, float levels = {{{levels}}}, float inv_levels = {{{1 / float(levels)}}},
     float lo = {{0.0}}, float hi = {{{hi}}}, float half = {{{half}}}, float out_theta = {{{out_theta}}}> {{
        s = {first}
        c = Clip (s, lo, hi)
        m = {mul_order}
        a = Add (half, m)
        f = Floor (a)
        d = {last}
        y = Mul (out_theta, d)
    }}"""


def _qcfs_reference(x, theta=4.0, levels=4):
    return theta / levels * np.clip(np.floor((x * levels + theta / 2) / theta), 0, levels)


@pytest.mark.parametrize("first", ["Div (x, theta)", "Mul (x, inv_theta)", "Mul (inv_theta, x)"])
@pytest.mark.parametrize("last", ["Div (f, levels)", "Mul (f, inv_levels)"])
@pytest.mark.parametrize("mul_order", ["Mul (c, levels)", "Mul (levels, c)"])
def test_qcfs_chain_variants_match(first, last, mul_order):
    model = graphs.ir_model(_qcfs_text(first, last, mul_order))
    x = RNG.uniform(-1, 6, size=(2, 3, 6, 6)).astype(np.float32)
    assert np.allclose(graphs.run(model, x=x)[0], _qcfs_reference(x), atol=1e-6)
    assert MatchActivationsPass()(model).modified
    (act,) = _activations(model)
    assert act.kind == "qcfs" and act.levels == 4 and np.allclose(act.theta, [4.0])
    assert len(list(model.graph)) == 1


@pytest.mark.parametrize("change", [dict(hi="2.0"), dict(half="0.25"), dict(out_theta="3.0"), dict(levels="2.5")])
def test_near_qcfs_chains_are_not_qcfs(change):
    model = graphs.ir_model(_qcfs_text(**change))
    MatchActivationsPass()(model)
    assert all(a.kind != "qcfs" for a in _activations(model))
    assert "Floor" in graphs.op_types(model)


@pytest.mark.parametrize("body,kind,clip_max", [
    ("y = Relu (x)", "relu", None),
    ("y = Max (x, zero)", "relu", None),
    ("y = Max (zero, x)", "relu", None),
    ("y = Clip (x, zero)", "relu", None),
    ("y = Clip (x, zero, six)", "clip", 6.0),
])
def test_relu_forms_match(body, kind, clip_max):
    text = f"g (float[N,3,6,6] x) => (float[N,3,6,6] y) <float zero = {{0.0}}, float six = {{6.0}}> {{ {body} }}"
    model = graphs.ir_model(text)
    assert MatchActivationsPass()(model).modified
    (act,) = _activations(model)
    assert act.kind == kind and act.clip_max == clip_max


@pytest.mark.parametrize("body", ["y = Max (x, one)", "y = Clip (x, minus_one, six)", "y = LeakyRelu (x)"])
def test_non_relu_forms_do_not_match(body):
    text = f"g (float[N,3,6,6] x) => (float[N,3,6,6] y) <float one = {{1.0}}, float minus_one = {{-1.0}}, float six = {{6.0}}> {{ {body} }}"
    model = graphs.ir_model(text)
    assert not MatchActivationsPass()(model).modified


def test_clip_on_pad_arithmetic_is_not_a_neuron():
    """timm's Conv2dSame with dynamic H, W: max((ceil(H/s)-1)*s + k - H, 0) as Clip(x, 0) on shapes."""
    text = """g (float[N,3,H,W] x) => (float[N,3,?,?] y) {
        shape = Shape <start: int = 2> (x)
        hw = Cast <to: int = 1> (shape)
        k = Constant <value_floats: floats = [3.0, 3.0]> ()
        need = Sub (k, hw)
        zero = Constant <value: tensor = float {0.0}> ()
        pad = Clip (need, zero)
        ints = Cast <to: int = 7> (pad)
        zeros = Constant <value_ints: ints = [0, 0]> ()
        pads = Concat <axis: int = 0> (zeros, zeros, zeros, ints)
        padded = Pad (x, pads)
        y = Relu (padded)
    }"""
    model = graphs.ir_model(text)
    FoldConstantsPass()(model)
    MatchActivationsPass()(model)
    kinds = [(n.op_type, n.domain) for n in model.graph if n.op_type in ("Clip", "Activation")]
    assert kinds == [("Clip", ""), ("Activation", "snncc.internal")]


def test_relu6_attribute_form_before_opset_11_matches_after_conversion():
    model = graphs.ir_model("g (float[N,3,6,6] x) => (float[N,3,6,6] y) { y = Clip <min: float = 0.0, max: float = 6.0> (x) }", opset=10)
    ConvertOpsetPass(21)(model)
    FoldConstantsPass()(model)
    MatchActivationsPass()(model)
    (act,) = _activations(model)
    assert act.kind == "clip" and act.clip_max == 6.0


# --- move_maxpool ----------------------------------------------------------------------------

def test_maxpool_before_activation_moves_after_it():
    text = """g (float[N,3,6,6] x) => (float[N,3,3,3] y) {
        p = MaxPool <kernel_shape: ints = [2, 2], strides: ints = [2, 2]> (x)
        y = Relu (p)
    }"""
    model = graphs.ir_model(text)
    MatchActivationsPass()(model)
    assert MoveMaxPoolAfterActivationPass()(model).modified
    assert [n.op_type for n in model.graph] == ["Activation", "MaxPool"]
    assert model.graph.outputs[0].producer().op_type == "MaxPool"
    assert model.graph.outputs[0].name == "y"


def test_maxpool_with_other_consumers_stays():
    text = """g (float[N,3,6,6] x) => (float[N,3,3,3] y, float[N,3,3,3] z) {
        p = MaxPool <kernel_shape: ints = [2, 2], strides: ints = [2, 2]> (x)
        y = Relu (p)
        z = Neg (p)
    }"""
    model = graphs.ir_model(text)
    MatchActivationsPass()(model)
    assert not MoveMaxPoolAfterActivationPass()(model).modified


# --- check_convertible -----------------------------------------------------------------------

def _matched(body: str, out_shape="N,4,6,6") -> ir.Model:
    consts = ", ".join(_floats(shape, i).replace("] ", f"] {name} = ", 1) for i, (name, shape) in enumerate(
        [("w1", (4, 3, 3, 3)), ("w2", (4, 4, 3, 3)), ("s", (4,)), ("b", (4,)), ("mu", (4,))]))
    text = f"""g (float[N,3,6,6] x) => (float[{out_shape}] y)
    <{consts}, float[4] var = {{1.0, 2.0, 0.5, 1.5}}, float k = {{-2.0}}> {{
        {body}
    }}"""
    model = graphs.ir_model(text)
    MatchActivationsPass()(model)
    ir.passes.common.TopologicalSortPass()(model)
    return model


def test_sigmoid_between_neurons_is_named():
    model = _matched("""c1 = Conv <pads: ints = [1,1,1,1]> (x, w1)
        r1 = Relu (c1)
        sg = Sigmoid (r1)
        c2 = Conv <pads: ints = [1,1,1,1]> (sg, w2)
        y = Relu (c2)""")
    with pytest.raises(ConversionError) as error:
        CheckConvertiblePass("net.onnx")(model)
    assert [(p.op, p.node) for p in error.value.problems] == [("Sigmoid", error.value.problems[0].node)]
    assert "net.onnx" in str(error.value) and "Sigmoid" in str(error.value)


def test_every_problem_is_reported():
    model = _matched("""c1 = Conv <pads: ints = [1,1,1,1]> (x, w1)
        r1 = Relu (c1)
        r2 = Relu (Neg_r1)
        Neg_r1 = Neg (c1)
        prod = Mul (r1, r2)
        sg = Sigmoid (prod)
        c2 = Conv <pads: ints = [1,1,1,1]> (sg, w2)
        y = Relu (c2)""")
    ops = sorted(p.op for p in find_problems(model.graph))
    assert ops == ["Mul", "Sigmoid"]


def test_maxpool_after_residual_sum_is_rejected_but_after_negative_bn_is_exact():
    summed = _matched("""c1 = Conv <pads: ints = [1,1,1,1]> (x, w1)
        r1 = Relu (c1)
        c2 = Conv <pads: ints = [1,1,1,1]> (r1, w2)
        r2 = Relu (c2)
        add = Add (r1, r2)
        p = MaxPool <kernel_shape: ints = [3, 3], pads: ints = [1,1,1,1]> (add)
        y = Relu (p)""")
    assert [p.op for p in find_problems(summed.graph)] == ["MaxPool"]
    scaled = _matched("""c1 = Conv <pads: ints = [1,1,1,1]> (x, w1)
        r1 = Relu (c1)
        bn = BatchNormalization (r1, s, b, mu, var)
        neg = Mul (bn, k)
        p = MaxPool <kernel_shape: ints = [3, 3], pads: ints = [1,1,1,1]> (neg)
        c2 = Conv <pads: ints = [1,1,1,1]> (p, w2)
        y = Relu (c2)""")
    assert find_problems(scaled.graph) == []


def test_non_exact_ops_after_the_last_neuron_are_fine():
    model = _matched("""c1 = Conv <pads: ints = [1,1,1,1]> (x, w1)
        r1 = Relu (c1)
        y = Softmax <axis: int = 1> (r1)""")
    assert find_problems(model.graph) == []


def test_transposes_are_followed_and_only_a_misplaced_batch_is_rejected():
    """Two Transposes that swap the batch axis out and back are exact; a Conv on the swapped
    tensor would treat the channels as the batch and is refused, named."""
    round_trip = _matched("""c1 = Conv <pads: ints = [1,1,1,1]> (x, w1)
        r1 = Relu (c1)
        t = Transpose <perm: ints = [1, 0, 2, 3]> (r1)
        t2 = Transpose <perm: ints = [1, 0, 2, 3]> (t)
        c2 = Conv <pads: ints = [1,1,1,1]> (t2, w2)
        y = Relu (c2)""")
    ir.passes.common.ShapeInferencePass()(round_trip)
    assert find_problems(round_trip.graph) == []
    swapped = _matched("""c1 = Conv <pads: ints = [1,1,1,1]> (x, w1)
        r1 = Relu (c1)
        t = Transpose <perm: ints = [1, 0, 2, 3]> (r1)
        c2 = Conv <pads: ints = [1,1,1,1]> (t, w2)
        y = Relu (c2)""", out_shape="4,N,6,6")
    ir.passes.common.ShapeInferencePass()(swapped)
    problems = find_problems(swapped.graph)
    assert [p.op for p in problems] == ["Conv"]
    assert "axis 1" in problems[0].reason and "batch" in problems[0].reason
