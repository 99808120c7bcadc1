"""The `snn` op set: domain, version, and the model-local function library."""

from __future__ import annotations

import onnx

from snncc.ops.folded import SPIKE_COUNT, SPIKE_TRAIN, spike_count_function, spike_train_function
from snncc.ops.parallel_spike import OP_TYPE as PARALLEL_SPIKE
from snncc.ops.parallel_spike import parallel_spike_function
from snncc.ops.serial_if import OP_TYPE as SERIAL_IF
from snncc.ops.serial_if import serial_if_function

DOMAIN = "snn"
VERSION = 1
# The standard opset every compiled model (and every function body) uses.
TARGET_OPSET = 21
# The ops that are a layer of spiking neurons (SpikeTrain only rebuilds a train from counts).
NEURON_OPS = (PARALLEL_SPIKE, SPIKE_COUNT, SERIAL_IF)
# Each neuron op's per-channel parameters, inputs 1, 2, ... (SpikeCount's rate_per_spike: optional,
# native CPU kernel only; docs/ops.md).
PARAMETER_INPUTS = {PARALLEL_SPIKE: ("theta_pre", "theta_post", "psi"), SERIAL_IF: ("theta_pre", "theta_post", "psi"),
                    SPIKE_COUNT: ("theta_pre", "psi", "rate_per_spike")}


def is_neuron(node) -> bool:
    """Whether an onnx or onnx_ir node is a layer of spiking neurons."""
    return node.domain == DOMAIN and node.op_type in NEURON_OPS


def function_library() -> list[onnx.FunctionProto]:
    """Every `snn` op as a model-local function, ready to attach to a compiled model."""
    return [
        parallel_spike_function(DOMAIN, TARGET_OPSET),
        spike_count_function(DOMAIN, TARGET_OPSET),
        spike_train_function(DOMAIN, TARGET_OPSET),
        serial_if_function(DOMAIN, TARGET_OPSET),
    ]


__all__ = ["DOMAIN", "VERSION", "TARGET_OPSET", "NEURON_OPS", "PARAMETER_INPUTS", "is_neuron", "PARALLEL_SPIKE", "SPIKE_COUNT", "SPIKE_TRAIN", "SERIAL_IF", "function_library"]
