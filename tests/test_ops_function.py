"""The model-local function of snn.ParallelSpike against an independent numpy reference.

The reference evaluates the paper's firing condition step by step (the dense form):
step x fires iff T/(T−x+1)·m + (θ_pre/2 + T·ψ)/(T−x+1) ≥ θ_pre.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from snncc import ops
from tests import graphs


def neuron_model(shape: tuple[int, ...], param_shape: tuple[int, ...], steps: int) -> onnx.ModelProto:
    dims = ",".join(["TB", *map(str, shape[1:])])
    pdims = ",".join(map(str, param_shape))
    text = f"""
    g (float[{dims}] X, float[{pdims}] theta_pre, float[{pdims}] theta_post, float[{pdims}] psi) => (float[{dims}] Y) {{
        Y = snn.ParallelSpike <T: int = {steps}> (X, theta_pre, theta_post, psi)
    }}"""
    return graphs.model(text, functions=ops.function_library(), extra_opsets={ops.DOMAIN: ops.VERSION})


def dense_reference(x, theta_pre, theta_post, psi, steps):
    """Paper's condition at every step; returns spikes [T, B, ...] and the tie mask."""
    m = x.reshape(steps, -1, *x.shape[1:]).astype(np.float64).mean(axis=0)
    out, ties = [], np.zeros(m.shape, bool)
    for step in range(1, steps + 1):
        remaining = steps - step + 1
        lhs = steps / remaining * m + (theta_pre / 2 + steps * psi) / remaining
        out.append(np.where(lhs >= theta_pre, theta_post, 0.0) * np.ones_like(m))
        ties |= np.abs(lhs - theta_pre) <= 1e-5 * np.maximum(np.abs(theta_pre), 1) * steps
    return np.stack(out), ties


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7, 8, 16, 32])
@pytest.mark.parametrize("per_channel", [False, True])
def test_function_matches_dense_condition(steps, per_channel):
    rng = np.random.default_rng(steps)
    batch, channels = 5, 3
    shape = (steps * batch, channels, 4, 4)
    pshape = (channels, 1, 1) if per_channel else (1,)
    theta_pre = rng.uniform(0.5, 2.0, pshape).astype(np.float32)
    theta_post = (theta_pre + rng.uniform(-0.2, 0.2, pshape)).astype(np.float32)
    psi = rng.uniform(-0.1, 0.1, pshape).astype(np.float32)
    x = rng.normal(0.8, 1.0, shape).astype(np.float32)
    (y,) = graphs.run(neuron_model(shape, pshape, steps), X=x, theta_pre=theta_pre, theta_post=theta_post, psi=psi)
    expected, ties = dense_reference(x, theta_pre, theta_post, psi, steps)
    got = y.reshape(steps, batch, *shape[1:])
    differs = np.any(~np.isclose(got, expected), axis=0)
    assert not np.any(differs & ~ties)
    # sorted trains: once a step fires, every later step fires
    fired = got != 0
    assert np.all(np.diff(fired.astype(np.int8), axis=0) >= 0)
    # Theorem 4.1: the T-mean is DA-QCFS(m; θ_pre, θ_post − θ_pre, ψ, T)
    m = x.reshape(steps, batch, *shape[1:]).mean(axis=0)
    k = np.clip(np.floor((steps * (m + psi) + theta_pre / 2) / theta_pre), 0, steps)
    assert np.allclose(got.mean(axis=0)[~ties], (k * theta_post / steps)[~ties], rtol=1e-6, atol=1e-6)


def test_rank2_and_currents_exactly_on_threshold():
    steps, batch = 4, 3
    theta = np.array([1.0], np.float32)
    # mean current m with (T·m + θ/2)/θ exactly integer: m = (j − 0.5)·θ/T fires exactly j steps
    levels = np.arange(0, steps + 1, dtype=np.float32)
    m = ((levels - 0.5) * theta / steps).astype(np.float32)
    x = np.tile(np.tile(m, (batch, 1)), (steps, 1))
    (y,) = graphs.run(neuron_model(x.shape, (1,), steps), X=x, theta_pre=theta, theta_post=theta, psi=np.zeros(1, np.float32))
    counts = (y.reshape(steps, batch, -1) > 0).sum(axis=0)
    assert np.array_equal(counts, np.tile(levels.astype(int), (batch, 1)))


def test_non_finite_inputs():
    """NaN → silent; +inf → fires every step; −inf → silent (docs/ops.md)."""
    steps = 4
    x = np.tile(np.array([[np.nan, np.inf, -np.inf, 0.3]], np.float32), (steps, 1))
    one = np.ones(1, np.float32)
    (y,) = graphs.run(neuron_model(x.shape, (1,), steps), X=x, theta_pre=one, theta_post=one, psi=np.zeros(1, np.float32))
    assert np.array_equal((y > 0).sum(axis=0), [0, steps, 0, 1])


def test_function_passes_full_check():
    proto = neuron_model((8, 3, 2, 2), (3, 1, 1), 2)
    onnx.checker.check_model(proto, full_check=True)


@pytest.mark.parametrize("variant", [{}, {"fold_time": True}, {"neuron": "if"}], ids=["expanded", "folded", "serial_if"])
def test_compiled_model_inlines_into_standard_ops(variant):
    """A compiled model is portable to any ONNX backend: onnx's own inliner turns every snn op into
    standard ops (every attribute the bodies read is written on the nodes, since the inliner
    ignores function defaults), the result passes the full checker and computes the same outputs."""
    from pathlib import Path

    import onnx.inliner

    from snncc.compiler import CompileOptions, compile_model
    from snncc.session import make_session

    ann = onnx.load(Path(__file__).resolve().parent.parent / "models" / "fmnist_qcfs_vgg_t4.onnx")
    snn = compile_model(ann, CompileOptions(steps=4, **variant)).model
    inlined = onnx.inliner.inline_local_functions(snn)
    onnx.checker.check_model(inlined, full_check=True)
    assert not [n.op_type for n in inlined.graph.node if n.domain == ops.DOMAIN]
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    expected = make_session(snn, native=False).run(None, {"input": x})[0]
    np.testing.assert_array_equal(make_session(inlined, native=False).run(None, {"input": x})[0], expected)
