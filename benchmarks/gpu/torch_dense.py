"""PyTorch's dense equivalent of snn.ParallelSpike on the GPU, timed like the harness (JSON on stdout).

The same layer written with stock tensor ops: mean over T, closed-form spike count, then a [T, N]
comparison against the step index and a select. It is what a framework without the fused kernel
runs; its spike counts are checked against a float64 evaluation of the closed form (differences
only where the level lies within float rounding of an integer).

    python3 benchmarks/gpu/torch_dense.py [--neurons N] [--steps T ...] [--repeats R]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

CHANNELS, INNER = 64, 256


def parallel_spike(x, theta_pre, theta_post, psi, steps):
    """x: [T, N] float32 on the GPU; parameters: [N]-broadcastable."""
    mean = x.mean(dim=0)
    count = torch.clamp(torch.floor((steps * (mean + psi) + theta_pre / 2) / theta_pre), 0, steps)
    step = torch.arange(steps, device=x.device, dtype=x.dtype).unsqueeze(1)
    return torch.where(step >= steps - count, theta_post, torch.zeros((), device=x.device, dtype=x.dtype))


def best_ms(fn, repeats: int) -> float:
    fn()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = float("inf")
    for _ in range(repeats):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        best = min(best, start.elapsed_time(stop))
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--neurons", type=int, default=16 << 20)
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 32, 64, 128])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("torch_dense.py: no CUDA device")
    device = torch.device("cuda")
    neurons = args.neurons - args.neurons % (CHANNELS * INNER)
    generator = torch.Generator(device=device).manual_seed(0)
    channel = (torch.arange(neurons, device=device) // INNER) % CHANNELS
    theta_pre = (0.5 + torch.rand(CHANNELS, device=device, generator=generator))[channel]
    theta_post = (0.5 + torch.rand(CHANNELS, device=device, generator=generator))[channel]
    psi = (0.2 * torch.rand(CHANNELS, device=device, generator=generator) - 0.1)[channel]
    results = []
    for steps in args.steps:
        x = 3 * torch.rand(steps, neurons, device=device, generator=generator) - 0.5
        y = parallel_spike(x, theta_pre, theta_post, psi, steps)
        level = (steps * (x.double().mean(0) + psi.double()) + theta_pre.double() / 2) / theta_pre.double()
        expected = torch.clamp(torch.floor(level), 0, steps)
        differ = (y != 0).sum(0) != expected
        near = (level - level.round()).abs() < 1e-4 * (1 + level.abs())
        assert not (differ & ~near).any(), "spike counts differ away from a rounding boundary"
        ms = best_ms(lambda: parallel_spike(x, theta_pre, theta_post, psi, steps), args.repeats)
        gb = 2 * x.numel() * x.element_size() / 1e9
        results.append({"T": steps, "neurons": neurons, "ms": ms, "gb_per_s": gb / ms * 1e3,
                        "rounding_differences": int(differ.sum())})
        print(f"torch_dense: T={steps}: {ms:.3f} ms", file=sys.stderr)
        del x, y, level, expected, differ, near
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "results": results}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
