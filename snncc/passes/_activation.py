"""The internal activation record: one `snncc.internal::Activation` node per matched activation.

`match_activations` creates these nodes, later passes fill in the neuron parameters, and
`expand_time` replaces every one of them by `snn.ParallelSpike`; none survives compilation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from snncc.passes._graph import CASE_KEY, source_of, tag

INTERNAL_DOMAIN = "snncc.internal"
OP_TYPE = "Activation"

QCFS = "qcfs"
RELU = "relu"
CLIP = "clip"


@dataclasses.dataclass(frozen=True)
class Activation:
    """What the ANN computes at one activation: kind, QCFS threshold θ and levels T̃, clip bound."""

    kind: str
    theta: np.ndarray | None = None  # QCFS θ, 1-D: [1] (layer scalar) or [C]
    levels: int | None = None  # QCFS T̃
    clip_max: float | None = None  # upper bound of Clip(0, a) / ReLU6

    def attributes(self) -> dict:
        attrs: dict = {"kind": self.kind}
        if self.theta is not None:
            attrs["theta"] = [float(v) for v in self.theta]
        if self.levels is not None:
            attrs["levels"] = int(self.levels)
        if self.clip_max is not None:
            attrs["clip_max"] = float(self.clip_max)
        return attrs


def is_activation(node: ir.Node) -> bool:
    return node.domain == INTERNAL_DOMAIN and node.op_type == OP_TYPE


def read_activation(node: ir.Node) -> Activation:
    attrs = node.attributes
    theta = attrs.get("theta")
    return Activation(
        kind=attrs["kind"].as_string(),
        theta=None if theta is None else np.asarray(theta.as_floats(), dtype=np.float32),
        levels=attrs["levels"].as_int() if "levels" in attrs else None,
        clip_max=attrs["clip_max"].as_float() if "clip_max" in attrs else None,
    )


@dataclasses.dataclass(frozen=True)
class NeuronParameters:
    """Per-channel (or scalar) parameters of one parallel spiking neuron layer, all 1-D."""

    theta_pre: np.ndarray
    theta_post: np.ndarray
    psi: np.ndarray
    case: str

    def __post_init__(self):
        if not np.all(self.theta_pre > 0):
            raise ValueError("theta_pre must be positive")


_PARAM_KEYS = ("theta_pre", "theta_post", "psi")


def set_parameters(node: ir.Node, params: NeuronParameters) -> None:
    """Store the neuron parameters on an activation node (as float-list attributes)."""
    for key in _PARAM_KEYS:
        node.attributes[key] = ir.AttrFloat32s(key, [float(v) for v in getattr(params, key)])
    node.attributes["case"] = ir.AttrString("case", params.case)


def get_parameters(node: ir.Node) -> NeuronParameters | None:
    """The neuron parameters stored on an activation node, or None if not set yet."""
    if "theta_pre" not in node.attributes:
        return None
    arrays = {k: np.asarray(node.attributes[k].as_floats(), dtype=np.float32) for k in _PARAM_KEYS}
    return NeuronParameters(case=node.attributes["case"].as_string(), **arrays)


def broadcast_parameter(values: np.ndarray, rank: int) -> np.ndarray:
    """[C] -> [C, 1, ..., 1] broadcasting against one step [B, C, ...] of rank `rank`; [1] stays [1]."""
    if values.size == 1:
        return values.reshape(1).astype(np.float32)
    return values.reshape((-1,) + (1,) * max(rank - 2, 0)).astype(np.float32)


def tag_neuron(neuron: ir.Node, activation: ir.Node, params: NeuronParameters, what: str, pass_name: str) -> None:
    """Provenance, case and a one-line parameter summary on a node that implements `activation`."""
    def span(a):
        return f"{a.min():.4g}" if a.min() == a.max() else f"{a.min():.4g}..{a.max():.4g}"
    doc = (f"{what} ({params.case}): theta_pre={span(params.theta_pre)} theta_post={span(params.theta_post)} "
           f"psi={span(params.psi)} C={params.theta_pre.size}")
    tag(neuron, pass_name, source_of(activation), doc=doc)
    neuron.metadata_props[CASE_KEY] = params.case
