"""Block reconstruction (optional, needs torch: `pip install snncc[reconstruct]`).

A gradient refinement after calibration, in the spirit of BRECQ / AdaRound and of Li et al. 2021
("A Free Lunch From ANN") and Hao et al. 2023 (offset spikes). One block per neuron layer l, in
graph order (progressive): the synaptic layers from the previous neurons' outputs (and the graph
input) to l's input current, neuron l, and the synaptic layers from l's output to the input
currents of the next neurons (or to the graph outputs after the last one). For each block, Adam
minimises the mean squared error between those next input currents

- as the SNN computes them: l is DA-QCFS at T, k = clip(floor((z + ψ)·T/θ_pre + 1/2), 0, T),
  output θ_post·k/T, on the outputs of the already refined earlier neurons, and
- as the ANN computes them (its activations: ReLU, Clip, QCFS at T̃), on its own values,

over θ_pre, θ_post, ψ of l (per channel) and the weights and biases of the Conv / Gemm / MatMul
feeding l and of those feeding the next neurons or the outputs (`layer_graph.affine_producer`,
`read_out_layers`; with `weights=False` their biases only), with a straight-through estimator for
the floor. The calibration mode 'reconstruct' is 'ridge' followed by this with the defaults. Minibatches come from the first `samples` calibration samples; a block's result is
kept only if it lowers the block's error on all of them.

Invariant: afterwards every activation still carries neuron parameters (θ_pre > 0), the model
computes the same ops (only affine initializers, as copies, and neuron parameters changed), so the
compiled SNN equals the quantised ANN with the refined parameters; the summary lists every changed
layer for the model metadata.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir

from snncc.calibration.dataset import CalibrationData
from snncc.calibration.layer_graph import affine_producer, read_out_layers
from snncc.errors import SnnccError
from snncc.passes._graph import attr as _attr
from snncc.passes._graph import replace_with_initializer
from snncc.passes._activation import CLIP, QCFS, NeuronParameters, get_parameters, is_activation, read_activation, set_parameters

MISSING_TORCH = "reconstruction needs torch: pip install 'snncc[reconstruct]'"


@dataclasses.dataclass(frozen=True)
class ReconstructOptions:
    iterations: int = 300  # Adam steps per block
    batch_size: int = 64
    samples: int = 2048  # the first calibration samples used (all activations are kept in memory)
    learning_rate: float = 1e-2  # on parameters scaled to their own size (see _Scaled)
    weights: bool = True  # also refine the weights (not only the biases) of the affine layers of each block
    seed: int = 0


def import_torch():
    try:
        import torch
    except ImportError:
        raise SnnccError(MISSING_TORCH) from None
    return torch


class _Interpreter:
    """The analysed model's ops on torch tensors; an activation node is computed by `activation`."""

    def __init__(self, torch):
        self.torch, self.f = torch, torch.nn.functional
        self.overrides: dict[ir.Value, object] = {}  # constants replaced by trainable tensors
        self._constants: dict[ir.Value, object] = {}

    def value(self, value: ir.Value, env: dict):
        if value in self.overrides:
            return self.overrides[value]
        if value in env:
            return env[value]
        if value not in self._constants:
            array = value.const_value.numpy()
            self._constants[value] = self.torch.from_numpy(np.array(array)) if array.dtype != np.float64 else \
                self.torch.from_numpy(array.astype(np.float32))
        return self._constants[value]

    def run(self, nodes: list[ir.Node], env: dict, activation) -> None:
        for node in nodes:
            inputs = [self.value(v, env) if v is not None else None for v in node.inputs]
            env[node.outputs[0]] = activation(node, inputs[0]) if is_activation(node) else self._op(node, inputs)

    def _op(self, node: ir.Node, x: list):
        t, f, op = self.torch, self.f, node.op_type
        if op == "Conv":
            if _attr(node, "auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
                raise SnnccError(f"reconstruction: Conv '{node.name}' with auto_pad is not supported")
            pads = _attr(node, "pads", [0, 0, 0, 0])
            rank = len(pads) // 2
            if any(pads[i] != pads[i + rank] for i in range(rank)):
                x[0] = f.pad(x[0], [p for i in reversed(range(rank)) for p in (pads[i], pads[i + rank])])
                pads = [0] * (2 * rank)
            conv = f.conv2d if rank == 2 else f.conv1d
            return conv(x[0], x[1], x[2] if len(x) > 2 else None, stride=_attr(node, "strides", [1] * rank),
                        padding=list(pads[:rank]), dilation=_attr(node, "dilations", [1] * rank), groups=_attr(node, "group", 1))
        if op == "Gemm":
            a = x[0].T if _attr(node, "transA", 0) else x[0]
            b = x[1].T if _attr(node, "transB", 0) else x[1]
            y = _attr(node, "alpha", 1.0) * (a @ b)
            return y + _attr(node, "beta", 1.0) * x[2] if len(x) > 2 and x[2] is not None else y
        if op == "MatMul":
            return x[0] @ x[1]
        if op in ("Add", "Sub", "Mul", "Div"):
            return {"Add": t.add, "Sub": t.sub, "Mul": t.mul, "Div": t.div}[op](x[0], x[1])
        if op in ("MaxPool", "AveragePool"):
            kernel = _attr(node, "kernel_shape")
            pads = _attr(node, "pads", [0] * 2 * len(kernel))
            if any(pads[i] != pads[i + len(kernel)] for i in range(len(kernel))):
                raise SnnccError(f"reconstruction: {op} '{node.name}' with asymmetric pads is not supported")
            kwargs = dict(stride=_attr(node, "strides", kernel), padding=pads[:len(kernel)], ceil_mode=bool(_attr(node, "ceil_mode", 0)))
            if op == "MaxPool":
                return f.max_pool2d(x[0], kernel, dilation=_attr(node, "dilations", [1] * len(kernel)), **kwargs)
            return f.avg_pool2d(x[0], kernel, count_include_pad=bool(_attr(node, "count_include_pad", 0)), **kwargs)
        if op == "GlobalAveragePool":
            return x[0].mean(dim=tuple(range(2, x[0].dim())), keepdim=True)
        if op == "Flatten":
            axis = _attr(node, "axis", 1)
            return x[0].reshape(int(np.prod(x[0].shape[:axis])), -1)
        if op == "Reshape":
            shape = [x[0].shape[i] if int(d) == 0 else int(d) for i, d in enumerate(x[1].tolist())]
            return x[0].reshape(shape)
        if op == "Transpose":
            return x[0].permute(*_attr(node, "perm"))
        if op == "Concat":
            return t.cat([v for v in x if v is not None], dim=_attr(node, "axis"))
        if op == "Identity":
            return x[0]
        raise SnnccError(f"reconstruction: op {op} ('{node.name}') is not supported; compile without reconstruction")


def _floor_ste(torch, x):
    """floor(x) forward, the identity's gradient backward (straight-through estimator)."""
    return x + (torch.floor(x) - x).detach()


def _channel_view(array, rank: int):
    return array.reshape((1, -1) + (1,) * (rank - 2)) if rank > 2 else array.reshape(1, -1)


def _ann_activation(torch):
    def activation(node: ir.Node, z):
        record = read_activation(node)
        if record.kind == QCFS:
            theta = _channel_view(torch.from_numpy(record.theta), z.dim())
            return theta / record.levels * torch.clamp(torch.floor(z * record.levels / theta + 0.5), 0, record.levels)
        return torch.clamp(z, 0, record.clip_max) if record.kind == CLIP else torch.relu(z)
    return activation


MIN_THETA = 1e-6  # θ_pre stays positive (the neuron divides by it)


def _snn_activation(torch, steps: int, parameters: dict[str, tuple]):
    """DA-QCFS at T with the node's parameters, or the trainable ones given in `parameters`."""
    def activation(node: ir.Node, z):
        stored = get_parameters(node)
        theta_pre, theta_post, psi = parameters.get(node.name) or [
            torch.from_numpy(a) for a in (stored.theta_pre, stored.theta_post, stored.psi)]
        view = lambda a: _channel_view(a, z.dim())  # noqa: E731
        level = (z + view(psi)) * steps / view(torch.clamp(theta_pre, min=MIN_THETA)) + 0.5
        return torch.clamp(_floor_ste(torch, level), 0, steps) * view(theta_post) / steps
    return activation


class _Scaled:
    """A trainable tensor p = p0 + scale·u (u starts at 0), so one learning rate suits every parameter."""

    def __init__(self, torch, start: np.ndarray, scale: np.ndarray | float):
        self.start = torch.from_numpy(start.astype(np.float32))
        scale = np.asarray(scale, np.float32)
        self.scale = torch.from_numpy(np.where(scale > 0, scale, np.float32(1)).astype(np.float32))
        self.u = torch.zeros_like(self.start, requires_grad=True)

    def __call__(self):
        return self.start + self.scale * self.u

    def numpy(self) -> np.ndarray:
        return self().detach().numpy().astype(np.float32)


def _mse(torch, a, b):
    return torch.mean((a - b) ** 2)


@dataclasses.dataclass(frozen=True)
class _Block:
    neuron: ir.Node
    cut: set[ir.Value]  # where the block's inputs come from: other neurons' outputs and the graph input
    targets: list[ir.Value]  # the next neurons' input currents (or graph outputs) it is fitted on
    nodes: list[ir.Node]  # from the cut to the targets, the neuron included, in graph order
    layers: list[ir.Node]  # the affine layers whose parameters it refines


def _synaptic_sinks(graph: ir.Graph, ends: set[ir.Value]) -> dict[ir.Value, set[ir.Value]]:
    """For every value, the values of `ends` it reaches through synaptic layers only (without
    crossing an activation), itself included: one walk of the graph in reverse topological order."""
    sinks: dict[ir.Value, set[ir.Value]] = {}
    for node in reversed(list(graph)):
        for value in node.outputs:
            reached = {value} & ends
            for consumer, _ in value.uses():
                if not is_activation(consumer):
                    reached = reached.union(*(sinks[o] for o in consumer.outputs))
            sinks[value] = reached
    return sinks


def _blocks(model: ir.Model) -> list[_Block]:
    """One block per activation l: the synaptic layers to l's input current, l, and those from l's
    output to the currents (or graph outputs) it reaches, from one backward walk of the graph."""
    graph = model.graph
    activations = [n for n in graph if is_activation(n)]
    ends = [n.inputs[0] for n in activations] + list(graph.outputs)  # what the blocks are fitted on
    sinks = _synaptic_sinks(graph, set(ends))
    producers = {n.inputs[0]: affine_producer(n) for n in activations}
    read_out = read_out_layers(model)
    spiking = {n.outputs[0] for n in activations} | set(graph.inputs)  # what the cut of a block consists of
    blocks = []
    for neuron in activations:
        reached = sinks[neuron.outputs[0]]
        targets = [v for v in ends if v in reached]
        region = reached | {neuron.inputs[0]}
        nodes = [n for n in graph if n is neuron or (not is_activation(n) and any(sinks[o] & region for o in n.outputs))]
        following = [producers[t] for t in targets if t in producers] + (read_out if set(graph.outputs) & reached else [])
        layers = [layer for layer in [producers[neuron.inputs[0]]] + following if layer is not None and layer in nodes]
        blocks.append(_Block(neuron, spiking - {neuron.outputs[0]}, targets, nodes, layers))
    return blocks


def reconstruct(model: ir.Model, original: ir.Model, data: CalibrationData, steps: int, options: ReconstructOptions) -> dict:
    """Refine the calibrated model in place, block by block, towards `original` (the analysed ANN
    before calibration changed any weight); returns a summary for the metadata."""
    torch = import_torch()
    torch.manual_seed(options.seed)
    x = torch.from_numpy(np.array(data.x[:options.samples], dtype=np.float32))  # a writable copy
    source = model.graph.inputs[0]
    # The ANN's own values (the targets), and the SNN's neuron outputs as the blocks are refined.
    with torch.no_grad():
        values = {original.graph.inputs[0]: x}
        _Interpreter(torch).run(list(original.graph), values, _ann_activation(torch))
    ann_env = {value.name: tensor for value, tensor in values.items()}
    snn_env = {source: x}
    rng = np.random.default_rng(options.seed)
    summary = {"iterations": options.iterations, "samples": int(len(x)), "batch_size": options.batch_size,
               "learning_rate": options.learning_rate, "weights": options.weights, "blocks": [], "changed_layers": []}
    for block in _blocks(model):
        start, end = _refine(torch, model.graph, block, snn_env, ann_env, steps, options, rng)
        if end < start:
            summary["changed_layers"] = sorted(set(summary["changed_layers"]) | {layer.name for layer in block.layers})
        summary["blocks"].append({"block": block.neuron.name, "mse_before": start, "mse_after": min(start, end)})
    return summary


def _refine(torch, graph: ir.Graph, block: _Block, snn_env: dict, ann_env: dict, steps: int,
            options: ReconstructOptions, rng: np.random.Generator) -> tuple[float, float]:
    """Fit one block by Adam; write its parameters back if that lowered its error on all samples, and
    store the neuron's output (as the SNN now computes it) in snn_env. Returns the errors before and after."""
    neuron = block.neuron
    trainable, overrides = _trainables(torch, neuron, block.layers, options, steps)
    interpreter = _Interpreter(torch)
    inputs = [v for v in block.cut if v in snn_env]

    def forward(index, trained=True):
        interpreter.overrides = {v: p() for v, p in overrides.items()} if trained else {}
        parameters = {neuron.name: tuple(p() for p in trainable["neuron"])} if trained else {}
        env = {v: snn_env[v][index] for v in inputs}
        interpreter.run(block.nodes, env, _snn_activation(torch, steps, parameters))
        return env

    def loss(env, index):
        return sum(_mse(torch, env[t], ann_env[t.name][index]) for t in block.targets)

    everything = np.arange(len(snn_env[graph.inputs[0]]))
    with torch.no_grad():
        start = float(loss(forward(everything), everything))
    optimiser = torch.optim.Adam([p.u for group in trainable.values() for p in group], lr=options.learning_rate)
    for _ in range(options.iterations):
        index = rng.choice(everything.size, min(options.batch_size, everything.size), replace=False)
        value = loss(forward(index), index)
        optimiser.zero_grad()
        value.backward()
        optimiser.step()
    with torch.no_grad():
        env = forward(everything)
        end = float(loss(env, everything))
        if end < start:
            _write(graph, neuron, trainable, block.layers, overrides)
        else:
            env = forward(everything, trained=False)
    snn_env[neuron.outputs[0]] = env[neuron.outputs[0]]
    return start, end


def _trainables(torch, neuron: ir.Node, layers: list[ir.Node], options: ReconstructOptions, steps: int):
    """The neuron's θ_pre, θ_post, ψ and the layers' biases (and weights, if asked)."""
    trainable, overrides = {}, {}
    p = get_parameters(neuron)
    channels = max(p.theta_pre.size, p.theta_post.size, p.psi.size)
    full = [np.broadcast_to(a, (channels,)).copy() for a in (p.theta_pre, p.theta_post, p.psi)]
    trainable["neuron"] = (_Scaled(torch, full[0], full[0]), _Scaled(torch, full[1], full[0]),
                           _Scaled(torch, full[2], full[0] / steps))  # per channel, relative to θ_pre
    for layer in layers:
        if len(layer.inputs) > 2 and layer.inputs[2] is not None and layer.inputs[2].const_value is not None:
            bias = layer.inputs[2].const_value.numpy()
            overrides[layer.inputs[2]] = _Scaled(torch, bias, float(np.mean(np.abs(bias))) or 1.0)
            trainable[f"{layer.name}.bias"] = (overrides[layer.inputs[2]],)
        if options.weights:
            weight = layer.inputs[1].const_value.numpy()
            overrides[layer.inputs[1]] = _Scaled(torch, weight, float(np.mean(np.abs(weight))))
            trainable[f"{layer.name}.weight"] = (overrides[layer.inputs[1]],)
    return trainable, overrides


def _write(graph: ir.Graph, neuron: ir.Node, trainable: dict, layers: list, overrides: dict) -> None:
    """The refined neuron parameters onto the node, refined initializers as copies (silent channels stay silent)."""
    old = get_parameters(neuron)
    theta_pre, theta_post, psi = (p.numpy() for p in trainable["neuron"])
    silent = np.broadcast_to(old.theta_post, theta_post.shape) == 0
    set_parameters(neuron, NeuronParameters(
        theta_pre=np.where(silent, 1, np.maximum(theta_pre, MIN_THETA)).astype(np.float32),
        theta_post=np.where(silent, 0, theta_post).astype(np.float32),
        psi=np.where(silent, 0, psi).astype(np.float32), case=old.case))
    for layer in layers:
        weight = overrides.get(layer.inputs[1])
        if weight is not None:
            replace_with_initializer(graph, layer, 1, weight.numpy().reshape(layer.inputs[1].shape), "reconstructed")
        bias = overrides.get(layer.inputs[2]) if len(layer.inputs) > 2 else None
        if bias is not None:
            replace_with_initializer(graph, layer, 2, bias.numpy().reshape(layer.inputs[2].shape), "reconstructed")

