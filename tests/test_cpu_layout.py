"""Neurons in ONNX Runtime's NCHWc layout: the `channel_block` attribute of the native CPU kernels,
and `snncc.cpu_layout.prepare_for_cpu`, which keeps a compiled model's neurons in that layout.

References: a blocked kernel call equals the plain kernel on the same tensor reordered to NCHW;
a prepared model equals the compiled model run by ONNX Runtime with the native library, bit for
bit (a folded model's rate Muls fused into its SpikeCounts included), except where the blocked
layout lets ONNX Runtime fuse a residual Add into a convolution: there the standard of the folded
graph (issue #6) holds, logits within 1e-4 of their largest on 99% of inputs.

Any x86-64 CPU: the kernel tests run blocks of 8 (AVX2) and 16 (AVX-512) wherever they run, with
the best and the baseline kernel variant. What prepare_for_cpu blocks depends on the CPU's block
size and on what ONNX Runtime then blocks (with 16, it runs a convolution of 12 input channels in
NCHW), so the model tests derive it from ONNX Runtime's graph of the unprepared model, and skip
where ONNX Runtime uses no NCHWc.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest

from snncc import cpu_layout, ops
from snncc.calibration.dataset import CalibrationData
from snncc.compiler import CompileOptions, compile_model
from snncc.ops import DOMAIN, TARGET_OPSET
from snncc.session import make_session, native_library_path
from tests import random_cnn
from tests.random_cnn import Act, Block, NetSpec

if native_library_path() is None:
    pytest.skip("native library not built (run `make native`) or SNNCC_NATIVE=0", allow_module_level=True)

# This CPU's NCHWc block (8 with AVX2, 16 with AVX-512, 1 without NCHWc), and the block that the
# models' channel counts are multiples of.
BLOCK = cpu_layout.nchwc_block_size()
WIDTH = max(BLOCK, 8)
needs_nchwc = pytest.mark.skipif(BLOCK == 1, reason="ONNX Runtime uses no NCHWc layout on this CPU")
CPU = ["CPUExecutionProvider"]


def neuron_model(op: str, steps: int, shape: tuple[int, ...], params: dict[str, np.ndarray], block: int,
                 variant: str = "") -> onnx.ModelProto:
    """One neuron node; `variant` "constant_input" (ParallelSpike) or "rate_per_spike" (SpikeCount)."""
    attributes = {"T": steps} | ({"channel_block": block} if block > 1 else {})
    if variant == "constant_input":
        attributes["constant_input"] = 1
    inputs = ops.PARAMETER_INPUTS[op]
    if op == ops.SPIKE_COUNT and variant != "rate_per_spike":
        inputs = inputs[:2]  # without the optional rate_per_spike
    node = oh.make_node(op, ["X", *inputs], ["Y"], domain=DOMAIN, **attributes)
    y_shape = [shape[0] * steps, *shape[1:]] if variant == "constant_input" else list(shape)
    graph = oh.make_graph([node], "neuron", [oh.make_tensor_value_info("X", onnx.TensorProto.FLOAT, list(shape))],
                          [oh.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, y_shape)],
                          [onh.from_array(params[k], k) for k in inputs])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", TARGET_OPSET), oh.make_opsetid(DOMAIN, 1)])


def to_nchw(x: np.ndarray, block: int) -> np.ndarray:
    """The NCHW tensor whose NCHWc storage is x's memory ([N, C/b, H, W, b] read as [N, C, H, W])."""
    n, c, h, w = x.shape
    return x.reshape(n, c // block, h, w, block).transpose(0, 1, 4, 2, 3).reshape(n, c, h, w)


def run(model: onnx.ModelProto, x: np.ndarray, cpu_variant: str = "") -> np.ndarray:
    """The model's output with the native library; cpu_variant: SNNCC_CPU_VARIANT ("": the best)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SNNCC_CPU_VARIANT", cpu_variant)
        session = make_session(model, native=True, providers=CPU, threads=2)
    return session.run(None, {"X": x})[0]


@pytest.mark.parametrize("cpu_variant", ["", "baseline"], ids=["best", "baseline"])
@pytest.mark.parametrize("block", [8, 16])
@pytest.mark.parametrize("op", [ops.PARALLEL_SPIKE, "ParallelSpike constant_input", ops.SERIAL_IF, ops.SPIKE_COUNT,
                                "SpikeCount rate_per_spike"])
@pytest.mark.parametrize("steps", [1, 4, 5, 16])
@pytest.mark.parametrize("spatial", [(5, 7), (1, 1), (40, 40)])
def test_blocked_kernel_equals_plain_kernel_on_reordered_tensor(op, steps, spatial, block, cpu_variant):
    # Blocks of 8 and 16 on any CPU (the kernels take any block; ONNX Runtime uses one of them).
    # (5, 7): runs of 35·b neurons cross the kernels' 4096-neuron chunks mid-block; (40, 40): runs
    # longer than a chunk; (1, 1): a run per block.
    op, _, variant = op.partition(" ")
    rng = np.random.default_rng(steps)
    channels, rows = 3 * block, 2 * (1 if op == ops.SPIKE_COUNT or variant == "constant_input" else steps)
    shape = (rows, channels, *spatial)
    params = {"theta_pre": rng.uniform(0.5, 2.0, (channels, 1, 1)), "theta_post": rng.uniform(0.5, 2.0, (channels, 1, 1)),
              "psi": rng.uniform(-0.3, 0.3, (channels, 1, 1)), "rate_per_spike": rng.uniform(0.1, 0.5, (channels, 1, 1))}
    params = {k: v.astype(np.float32) for k, v in params.items()}
    x = rng.uniform(-0.5, 2.5, shape).astype(np.float32)
    blocked = run(neuron_model(op, steps, shape, params, block, variant), x, cpu_variant)
    plain = run(neuron_model(op, steps, shape, params, 1, variant), to_nchw(x, block), cpu_variant)
    np.testing.assert_array_equal(to_nchw(blocked, block), plain)
    if spatial != (1, 1):  # (with H = W = 1, NCHWc is NCHW)
        # The mapping of neurons to channels matters: read as NCHW, the same memory gives other outputs.
        assert not np.array_equal(run(neuron_model(op, steps, shape, params, 1, variant), x, cpu_variant), blocked)


@pytest.mark.parametrize("block", [8, 16])
def test_channel_block_needs_whole_blocks(block):
    params = {k: np.ones((block + 1, 1, 1), np.float32) for k in ("theta_pre", "psi")}
    model = neuron_model(ops.SPIKE_COUNT, 4, (1, block + 1, 2, 2), params, block)
    with pytest.raises(Exception, match="channel_block"):
        run(model, np.zeros((1, block + 1, 2, 2), np.float32))


def qcfs(per_channel: bool = True) -> Act:
    return Act("qcfs", per_channel=per_channel)


# 12 channels: padded to whole blocks where ONNX Runtime blocks them; a MaxPool that it runs in
# NCHWc; scalar and per-channel parameters; a hidden Gemm neuron on a 2-D tensor.
SPEC = NetSpec(in_channels=3, size=10, classes=5, head="gap", head_act=qcfs(), blocks=(
    Block("conv", channels=12, act=qcfs()),
    Block("conv", channels=2 * WIDTH, act=qcfs()),
    Block("conv", channels=2 * WIDTH, act=qcfs(False)),
    Block("maxpool"),
    Block("conv", channels=2 * WIDTH, act=qcfs()),
))


def assert_logits_agree(got: np.ndarray, expected: np.ndarray) -> None:
    """The folded graph's standard: within 1e-4 of the largest logit on at least 99% of inputs."""
    close = np.abs(got - expected).max(axis=1) <= 1e-4 * np.abs(expected).max(axis=1)
    assert close.mean() >= 0.99


def compiled(variant: str, steps: int = 4) -> onnx.ModelProto:
    options = CompileOptions(steps=steps, neuron="if" if variant == "if" else "parallel", fold_time=variant == "folded")
    return compile_model(random_cnn.build(SPEC), options).model


def channel_block(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "channel_block"), 1)


def reorders(graph: onnx.GraphProto) -> int:
    return sum(n.domain == cpu_layout.NCHWC_DOMAIN and n.op_type.startswith("Reorder") for n in graph.node)


def run_by_ort(model: onnx.ModelProto) -> onnx.GraphProto:
    """The graph that ONNX Runtime's CPU provider runs for `model` with the native library."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.optimized_model_filepath = os.path.join(tmp, "optimised.onnx")
        options.register_custom_ops_library(str(native_library_path()))
        ort.InferenceSession(model.SerializeToString(), options, providers=CPU)
        return onnx.load(options.optimized_model_filepath).graph


def neurons_between_reorders(graph: onnx.GraphProto) -> tuple[set[str], set[str]]:
    """Of the neurons in ONNX Runtime's graph of an unprepared model: those whose input it reorders
    out of NCHWc (directly or through a Tile), and those of them whose output (or rate) it reorders
    straight back in (the copies that blocking a neuron saves)."""
    producers = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def is_reorder(node, op_type):
        return node is not None and node.domain == cpu_layout.NCHWC_DOMAIN and node.op_type == op_type

    def source(node):
        node = producers.get(node.input[0])
        return producers.get(node.input[0]) if node is not None and node.op_type == "Tile" else node

    def readers(node):  # of the neuron's output, or of its rate Mul's (a folded model's)
        found = consumers.get(node.output[0], [])
        return consumers.get(found[0].output[0], []) if len(found) == 1 and found[0].op_type == "Mul" else found

    fed = {n.name for n in graph.node if n.domain == DOMAIN and is_reorder(source(n), "ReorderOutput")}
    back = {n.name for n in graph.node if n.name in fed and readers(n)
            and all(is_reorder(r, "ReorderInput") for r in readers(n))}
    return fed, back


@needs_nchwc
@pytest.mark.parametrize("variant", ["expanded", "folded", "if"])
def test_prepared_model_keeps_neurons_blocked_and_computes_the_same(variant):
    snn = compiled(variant)
    prepared = cpu_layout.prepare_for_cpu(snn, native_library_path())
    neurons = [n for n in prepared.graph.node if n.domain == DOMAIN]
    assert sorted(n.name for n in neurons) == sorted(n.name for n in snn.graph.node if n.domain == DOMAIN)
    # What ONNX Runtime does with the unprepared model: it reorders the input of each neuron that
    # follows a blocked convolution out of NCHWc, and for some the output back in. Those between
    # two reorders must be blocked; no neuron whose input ONNX Runtime never had in NCHWc can be.
    unprepared = run_by_ort(snn)
    fed, back = neurons_between_reorders(unprepared)
    blocked = {n.name for n in neurons if channel_block(n) > 1}
    assert back and back <= blocked <= fed, (back, blocked, fed)
    assert {channel_block(n) for n in neurons if n.name in blocked} == {BLOCK}
    assert reorders(prepared.graph) < reorders(unprepared)
    # A blocked neuron's per-channel parameters are padded to whole blocks (the first layer's 12
    # channels, where ONNX Runtime blocks them).
    sizes = {i.name: int(np.prod(i.dims)) for i in snn.graph.initializer}
    for neuron in (n for n in neurons if n.name in blocked):
        original = next(n for n in snn.graph.node if n.name == neuron.name)
        for name, new_name in zip(original.input[1:], neuron.input[1:]):
            padded = sizes[name] > 1 and sizes[name] % BLOCK != 0
            assert (new_name == f"{name}.nchwc{BLOCK}") == padded, (neuron.name, name, new_name)
            if padded:
                size = next(int(np.prod(i.dims)) for i in prepared.graph.initializer if i.name == new_name)
                assert size == -(-sizes[name] // BLOCK) * BLOCK
    if variant == "folded":
        # The rate Muls of the 4-D neurons (by a per-channel vector, and by a scalar in the third
        # layer) are fused into their SpikeCounts, blocked or not: no depthwise convolution for
        # them. The 2-D neuron's Mul stays.
        assert [len(n.input) for n in neurons] == [4] * (len(neurons) - 1) + [3]
        assert sum(n.op_type == "Mul" for n in prepared.graph.node) == 1
    assert sum(n.op_type == "Conv" for n in prepared.graph.node) == sum(n.op_type == "Conv" for n in snn.graph.node)
    assert not prepared.functions
    x = random_cnn.inputs(SPEC, 64, seed=1)
    expected = make_session(snn, native=True, providers=CPU).run(None, {"x": x})[0]
    got = make_session(prepared, native=True, providers=CPU).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, expected)


@needs_nchwc
def test_make_session_cpu_layout_runs_the_prepared_model(monkeypatch):
    snn = compiled("expanded")
    x = random_cnn.inputs(SPEC, 8, seed=2)
    prepared = []
    prepare = cpu_layout.prepare_for_cpu
    monkeypatch.setattr(cpu_layout, "prepare_for_cpu", lambda *args: prepared.append(prepare(*args)) or prepared[-1])
    session = make_session(snn, native=True, providers=CPU, cpu_layout=True)
    assert len(prepared) == 1 and prepared[0] is not snn
    np.testing.assert_array_equal(session.run(None, {"x": x})[0],
                                  make_session(snn, native=True, providers=CPU).run(None, {"x": x})[0])


@needs_nchwc
def test_prepared_model_does_not_run_without_the_native_library():
    prepared = cpu_layout.prepare_for_cpu(compiled("folded"), native_library_path())
    with pytest.raises(Exception, match="SpikeCount"):
        make_session(prepared, native=False, providers=CPU)


def test_without_nchwc_the_model_is_returned_as_is(monkeypatch):
    snn = compiled("expanded")
    monkeypatch.setattr(cpu_layout, "nchwc_block_size", lambda: 1)
    assert cpu_layout.prepare_for_cpu(snn, native_library_path()) is snn


def folded_snn(body: list[onnx.NodeProto], out: str, channels: int, weights: dict[str, np.ndarray],
               in_channels: int, rng: np.random.Generator) -> tuple[onnx.ModelProto, np.ndarray]:
    """The folded SNN of an ANN made of `body` (from input x, [N, in_channels, 6, 6], to tensor
    `out` of `channels` channels), a global average pool and a Gemm to 4 classes, calibrated on 32
    random inputs; and those inputs."""
    weights = weights | {"fc": rng.normal(0, 0.3, (4, channels)), "fb": np.zeros(4)}
    head = [oh.make_node("GlobalAveragePool", [out], ["g"]), oh.make_node("Flatten", ["g"], ["f"]),
            oh.make_node("Gemm", ["f", "fc", "fb"], ["y"], transB=1)]
    graph = oh.make_graph(
        body + head, "ann", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", in_channels, 6, 6])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", 4])],
        [onh.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    ann = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=8)
    x = rng.normal(size=(32, in_channels, 6, 6)).astype(np.float32)
    return compile_model(ann, CompileOptions(steps=4, fold_time=True, calibration_data=CalibrationData(x, "test"))).model, x


@needs_nchwc
def test_neuron_after_a_convolution_outside_nchwc_is_left_in_nchw():
    # A grouped convolution with 4 channels per group is no NCHWc candidate: ONNX Runtime keeps it
    # as a FusedConv, into which it fuses the placeholder's Sigmoid; that neuron stays NCHW, the one
    # after the next (1x1) convolution is blocked.
    rng = np.random.default_rng(4)
    weights = {"w": rng.normal(0, 0.3, (16, 4, 3, 3)), "w2": rng.normal(0, 0.3, (16, 16, 1, 1))}
    body = [oh.make_node("Conv", ["x", "w"], ["c"], group=4, pads=[1, 1, 1, 1]), oh.make_node("Relu", ["c"], ["r"]),
            oh.make_node("Conv", ["r", "w2"], ["c2"]), oh.make_node("Relu", ["c2"], ["r2"])]
    snn, x = folded_snn(body, "r2", 16, weights, 16, rng)
    prepared = cpu_layout.prepare_for_cpu(snn, native_library_path())
    fused = [n for n in prepared.graph.node if n.op_type == "FusedConv"]
    assert len(fused) == 1 and not any(a.name == "activation" for a in fused[0].attribute)
    blocks = [next((a.i for a in n.attribute if a.name == "channel_block"), 1) for n in prepared.graph.node
              if n.domain == DOMAIN]
    assert blocks == [1, BLOCK]
    assert_logits_agree(make_session(prepared, native=True, providers=CPU).run(None, {"x": x})[0],
                        make_session(snn, native=True, providers=CPU).run(None, {"x": x})[0])


@needs_nchwc
@pytest.mark.parametrize("fold_time", [False, True])
def test_requested_spike_trains_come_out_in_nchw(fold_time):
    # Graph outputs are read in NCHW: ONNX Runtime reorders a blocked neuron output that is one.
    names = [n.name for n in compile_model(random_cnn.build(SPEC), CompileOptions(steps=4, fold_time=fold_time)).model.graph.node
             if n.domain == DOMAIN][:3]
    options = CompileOptions(steps=4, fold_time=fold_time, emit_spikes=tuple(names))
    snn = compile_model(random_cnn.build(SPEC), options).model
    prepared = cpu_layout.prepare_for_cpu(snn, native_library_path())
    x = random_cnn.inputs(SPEC, 8, seed=5)
    expected = make_session(snn, native=True, providers=CPU).run(None, {"x": x})
    got = make_session(prepared, native=True, providers=CPU).run(None, {"x": x})
    assert len(got) == 4
    for e, g in zip(expected[1:], got[1:]):
        np.testing.assert_array_equal(g, e)


# Residual blocks whose Add ONNX Runtime cannot prove to have equal input shapes (a strided
# projection shortcut beside a time-expanded branch): it runs the Add in NCHWc between Reshapes.
RESIDUAL_SPEC = NetSpec(in_channels=3, size=12, classes=5, head="gap", blocks=(
    Block("conv", channels=2 * WIDTH, act=qcfs()),
    Block("residual", channels=4 * WIDTH, stride=2, act=qcfs(), act2=qcfs()),
    Block("residual", channels=4 * WIDTH, act=qcfs(), act2=qcfs()),
))


@needs_nchwc
@pytest.mark.parametrize("variant", ["expanded", "folded", "if"])
def test_neurons_behind_nchwc_reshapes_are_blocked(variant):
    options = CompileOptions(steps=4, neuron="if" if variant == "if" else "parallel", fold_time=variant == "folded")
    snn = compile_model(random_cnn.build(RESIDUAL_SPEC), options).model
    prepared = cpu_layout.prepare_for_cpu(snn, native_library_path())
    neurons = [n for n in prepared.graph.node if n.domain == DOMAIN]
    assert all(any(a.name == "channel_block" for a in n.attribute) for n in neurons)
    x = random_cnn.inputs(RESIDUAL_SPEC, 64, seed=6)
    expected = make_session(snn, native=True, providers=CPU).run(None, {"x": x})[0]
    got = make_session(prepared, native=True, providers=CPU).run(None, {"x": x})[0]
    assert_logits_agree(got, expected)  # residual Adds fused into convolutions: float rounding


@needs_nchwc
def test_neurons_that_share_an_input_keep_their_reorders():
    # Two activations of one convolution: ONNX Runtime would merge their identical placeholders.
    rng = np.random.default_rng(7)
    weights = {"w": rng.normal(0, 0.3, (2 * WIDTH, 3, 3, 3)), "low": np.zeros(()), "high": np.full((), 0.5)}
    body = [oh.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), oh.make_node("Relu", ["c"], ["r"]),
            oh.make_node("Clip", ["c", "low", "high"], ["k"]), oh.make_node("Add", ["r", "k"], ["s"])]
    snn, x = folded_snn(body, "s", 2 * WIDTH, weights, 3, rng)
    prepared = cpu_layout.prepare_for_cpu(snn, native_library_path())
    assert sum(n.domain == DOMAIN for n in prepared.graph.node) == 2
    np.testing.assert_array_equal(make_session(prepared, native=True, providers=CPU).run(None, {"x": x})[0],
                                  make_session(snn, native=True, providers=CPU).run(None, {"x": x})[0])
