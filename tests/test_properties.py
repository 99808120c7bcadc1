"""Property: every random convertible CNN compiles, and its SNN equals the (DA-)QCFS ANN.

Hypothesis draws a `tests.random_cnn.NetSpec` (depth, widths, kernels, strides, residual adds,
Concat, pools, BatchNorm, Gemm heads; ReLU, ReLU6, Clip, Max(x, 0) and QCFS activations with
scalar or per-channel θ and T̃) and T, with or without DA-QCFS calibration. For each:

- the analysed ANN computes what the input model computes (canonicalisation is exact);
- the SNN equals the derived (DA-)QCFS ANN neuron by neuron: binary, sorted trains, spike counts
  equal to the reference levels except rare float ties (tests/equivalence.py);
- for QCFS-only nets without calibration, independently of snncc's own graphs: the SNN's outputs
  equal the same network with every QCFS at T levels (DA-QCFS with φ = ψ = 0, DESIGN §1), and at
  T = T̃ that is the ANN itself.

Failures shrink to small specs; each one found is kept as a test in tests/test_regressions.py.
SNNCC_PROPERTY_EXAMPLES raises the example count for a longer local run.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from snncc.calibration.dataset import CalibrationData
from snncc.calibration.pipeline import CalibrationOptions
from snncc.compiler import CompileOptions, compile_model
from tests import equivalence
from tests.random_cnn import ACTIVATIONS, Act, Block, NetSpec, build, inputs

EXAMPLES = int(os.environ.get("SNNCC_PROPERTY_EXAMPLES", "200"))
N_INPUTS = 200
QCFS_CASES = {"qcfs-lossless", "qcfs-T-differs"}

acts = st.builds(Act, kind=st.sampled_from(ACTIVATIONS), per_channel=st.booleans(), reciprocal=st.booleans(),
                 bound=st.sampled_from([1.0, 2.5, 6.0]), levels=st.sampled_from([1, 2, 4, 8]))
blocks = st.builds(
    Block, kind=st.sampled_from(["conv", "conv", "residual", "concat", "maxpool", "pool_first", "avgpool", "affine", "shuffle"]),
    channels=st.integers(1, 6), kernel=st.sampled_from([1, 3, 5]), stride=st.sampled_from([1, 2]), act=acts, act2=acts,
    batchnorm=st.booleans(), pad_node=st.booleans(), depthwise=st.booleans(), linear=st.booleans(),
    subtract=st.booleans(), ceil=st.booleans(), negative=st.booleans())
specs = st.builds(NetSpec, in_channels=st.integers(1, 3), size=st.integers(3, 8),
                  blocks=st.lists(blocks, min_size=1, max_size=4).map(tuple),
                  head=st.sampled_from(["gap", "flatten", "reshape", "conv_gap"]), head_act=st.none() | acts,
                  classes=st.integers(2, 4), seed=st.integers(0, 2**16))


def check_spec(spec: NetSpec, steps: int, calibrate: bool | None, with_data: bool) -> equivalence.Comparison:
    ann = build(spec)
    relu_like = any(a.kind != "qcfs" for a in spec.activations())
    data = CalibrationData(inputs(spec, 64, seed=1), "random") if relu_like or calibrate or with_data else None
    result = compile_model(ann, CompileOptions(steps=steps, calibration_data=data,
                                               calibration=CalibrationOptions(da_qcfs=calibrate)))
    x = inputs(spec, N_INPUTS, seed=2)
    original = equivalence.run(ann, x)
    equivalence.assert_outputs_close(original, equivalence.run(equivalence.original_ann(ann), x), list(original))
    stats = equivalence.assert_snn_equals_reference(result.model, equivalence.derived_reference(ann, result.model, steps),
                                                    steps, x)
    assert stats.layers == len(spec.activations())
    stats.cases = {layer.case for layer in result.layers}
    if stats.cases <= QCFS_CASES:
        at_steps = equivalence.run(build(spec, levels_override=steps), x)
        equivalence.assert_outputs_close(at_steps, equivalence.run(result.model, x), list(at_steps))
    return stats


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(spec=specs, steps=st.sampled_from([1, 2, 3, 4, 5, 8, 16]), calibrate=st.sampled_from([None, True, False]),
       with_data=st.booleans())
def test_random_cnn_snn_equals_quantised_ann(spec, steps, calibrate, with_data):
    assume(spec.activations())
    for block in spec.blocks:
        event(f"block {block.kind}")
    for act in spec.activations():
        event(f"activation {act.kind}")
    stats = check_spec(spec, steps, calibrate, with_data)
    for case in stats.cases:
        event(f"case {case}")
    event(f"float ties: {'some' if stats.ties else 'none'}")
