"""Per-channel neuron parameters that minimise a layer's output error against the ANN.

For one neuron layer, z_q is its input current as the SNN computes it (earlier layers already
quantised) and r its ANN output (ReLU, Clip or QCFS at T̃ of the ANN's own input current). Per
channel the parallel neuron outputs (DA-QCFS, DESIGN §1)

    q(z) = θ_post/T · k(z),   k(z) = clip(floor((z + ψ)·T/θ_pre + 1/2), 0, T),

and the search minimises E = Σ (q(z_q) − r)² over the calibration set. For fixed θ_pre and ψ
the best θ_post is closed-form, θ_post = T·Σkr / Σk² (then E = Σr² − (Σkr)²/Σk²), so the search
runs over a grid of θ_pre = f·top (f in THETA_FRACTIONS, top: the ANN's recorded threshold) and
ψ = δ + o·θ_pre/T (o in PSI_OFFSETS, δ: mean(z_ann) − mean(z_q), the bias correction).

The data enter through per-channel histograms over z_q (BINS bins on [−top, 2·top]; values
outside land in the end bins): the count and Σr per bin. k counts the level boundaries
β_j = θ_pre·(j − 1/2)/T − ψ at or below z, so Σkr = Σ_j Σ_{z ≥ β_j} r and
Σk² = Σ_j (2j − 1)·#{z ≥ β_j}: suffix sums of the histograms, exact to one bin.

Invariant: `search` returns θ_pre > 0, θ_post ≥ 0 and ψ per channel, float32 [C]; a channel whose
best output is 0 everywhere is silent (θ_post = 0, ψ = 0, θ_pre = 1).
"""

from __future__ import annotations

import dataclasses

import numpy as np

BINS = 4096
THETA_FRACTIONS = np.linspace(0.05, 1.0, 96)
PSI_OFFSETS = np.linspace(-0.5, 0.5, 21)


@dataclasses.dataclass(frozen=True)
class NeuronFit:
    theta_pre: np.ndarray
    theta_post: np.ndarray
    psi: np.ndarray
    error: np.ndarray  # the minimised Σ(q − r)² per channel (up to the histogram's resolution)


def _channel_sum(value: np.ndarray) -> np.ndarray:
    """Σ over every axis but the channel axis 1, in float64."""
    return value.sum(axis=tuple(a for a in range(value.ndim) if a != 1), dtype=np.float64)


class OutputErrorStatistics:
    """Histograms of z_q with Σr per bin, and the channel sums for the means, batch by batch."""

    def __init__(self, top: np.ndarray):
        self.top = np.asarray(top, np.float64)
        scale = np.where(self.top > 0, self.top, 1.0)
        self.low, self.width = -scale, 3 * scale / BINS
        channels = self.top.size
        self.count = np.zeros((channels, BINS))
        self.sum_r = np.zeros((channels, BINS))
        self.sum_r2 = np.zeros(channels)
        self.sum_z_q = np.zeros(channels)
        self.sum_z_ann = np.zeros(channels)
        self.n = 0

    def add(self, z_q: np.ndarray, z_ann: np.ndarray, r: np.ndarray) -> None:
        """One batch, [N, C, ...] each (channels on axis 1)."""
        channels = z_q.shape[1]
        shape = (1, channels) + (1,) * (z_q.ndim - 2)
        position = np.subtract(z_q, self.low.astype(np.float32).reshape(shape), dtype=np.float32)
        position *= (1 / self.width).astype(np.float32).reshape(shape)
        np.clip(position, 0, BINS - 1, out=position)
        flat = position.astype(np.intp)
        flat += (np.arange(channels) * BINS).reshape(shape)
        flat = flat.reshape(-1)
        self.count += np.bincount(flat, minlength=channels * BINS).reshape(channels, BINS)
        self.sum_r += np.bincount(flat, weights=r.reshape(-1), minlength=channels * BINS).reshape(channels, BINS)
        with np.errstate(over="ignore"):  # an overflow shows as a non-finite sum, refused where it is used
            self.sum_r2 += _channel_sum(np.square(r))
        self.sum_z_q += _channel_sum(z_q)
        self.sum_z_ann += _channel_sum(z_ann)
        self.n += z_q.size // channels

    def mean_shift(self) -> np.ndarray:
        """δ = mean(z_ann) − mean(z_q) per channel: the bias correction of the layer's input current."""
        return (self.sum_z_ann - self.sum_z_q) / max(self.n, 1)

    def search(self, steps: int, shift: np.ndarray) -> NeuronFit:
        """The grid's best (θ_pre, θ_post, ψ) per channel, ψ around `shift`."""
        channels = self.top.size
        suffix_count = np.concatenate([np.cumsum(self.count[:, ::-1], axis=1)[:, ::-1], np.zeros((channels, 1))], axis=1)
        suffix_r = np.concatenate([np.cumsum(self.sum_r[:, ::-1], axis=1)[:, ::-1], np.zeros((channels, 1))], axis=1)
        theta = THETA_FRACTIONS[None, :, None] * self.top[:, None, None]  # [C, F, 1]
        psi = shift[:, None, None] + PSI_OFFSETS[None, None, :] * theta / steps  # [C, F, O]
        sum_kr = np.zeros(psi.shape)
        sum_k2 = np.zeros(psi.shape)
        rows = np.arange(channels)[:, None, None]
        for j in range(1, steps + 1):
            boundary = theta * (j - 0.5) / steps - psi
            # the first bin whose centre is at or above the boundary
            first = np.ceil((boundary - self.low[:, None, None]) / self.width[:, None, None] - 0.5)
            first = np.clip(first, 0, BINS).astype(np.int64)
            sum_kr += suffix_r[rows, first]
            sum_k2 += (2 * j - 1) * suffix_count[rows, first]
        gain = np.where((sum_kr > 0) & (sum_k2 > 0), sum_kr ** 2 / np.where(sum_k2 > 0, sum_k2, 1), 0.0)
        best = np.argmax(gain.reshape(channels, -1), axis=1)
        f, o = np.unravel_index(best, gain.shape[1:])
        index = np.arange(channels)
        kr, k2 = sum_kr[index, f, o], sum_k2[index, f, o]
        active = (gain[index, f, o] > 0) & (self.top > 0)
        theta_pre = np.where(active, theta[index, f, 0], 1.0)
        theta_post = np.where(active, steps * kr / np.where(k2 > 0, k2, 1), 0.0)
        fit_psi = np.where(active, psi[index, f, o], 0.0)
        error = self.sum_r2 - gain[index, f, o]
        return NeuronFit(theta_pre.astype(np.float32), theta_post.astype(np.float32), fit_psi.astype(np.float32), error)
