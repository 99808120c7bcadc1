"""compile(model, options): ANN ONNX model -> parallel-spiking SNN ONNX model.

The pipeline is a fixed sequence of passes (snncc/passes), each one transformation:
canonicalise (opset, constants, no-ops, BatchNorm folding, dynamic batch), match activations,
move MaxPool after activations, set neuron parameters, check convertibility, expand time; then
the `snn` function library and the model metadata are attached.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import onnx_ir as ir

import snncc
from snncc import ops
from snncc.ann_graph import copy_model
from snncc.batch_dim_names import name_batch_dims
from snncc.calibration.dataset import CalibrationData, calibration_from_array
from snncc.calibration.pipeline import LAYERWISE_MODES, CalibrationOptions, calibrate_parameters
from snncc.calibration.reconstruct import ReconstructOptions, import_torch
from snncc.errors import SnnccError
from snncc.modelio import without_weights
from snncc.passes._activation import CLIP, QCFS, RELU, is_activation, read_activation
from snncc.passes._graph import CASE_KEY, source_of
from snncc.passes.canonicalize_qdq import CanonicalizeQdqPass
from snncc.passes.check_convertible import CheckConvertiblePass
from snncc.passes.convert_opset import ConvertOpsetPass, from_proto_at
from snncc.passes.emit_spikes import EmitSpikesPass
from snncc.passes.expand_time import ExpandTimePass
from snncc.passes.fold_time import FoldTimePass
from snncc.passes.fold_batchnorm import FoldBatchNormPass
from snncc.passes.fold_constants import FoldConstantsPass
from snncc.passes.freeze_initializer_inputs import FreezeInitializerInputsPass
from snncc.passes.make_batch_dynamic import MakeBatchDynamicPass
from snncc.passes.match_activations import MatchActivationsPass, other_activations
from snncc.passes.match_qdq import MatchQdqPass
from snncc.passes.move_maxpool import MoveMaxPoolAfterActivationPass
from snncc.passes.name_nodes import NameUnnamedNodesPass
from snncc.passes.remove_no_ops import RemoveNoOpsPass
from snncc.passes.set_qcfs_parameters import SetQcfsParametersPass

MAX_STEPS = 4096


@dataclasses.dataclass(frozen=True)
class CompileOptions:
    steps: int  # T, the number of time-steps of the SNN
    levels: int | None = None  # T̃ override for QCFS models (default: read from the graph)
    source: str = "model"  # how errors name the input (usually its file name)
    calibration_data: CalibrationData | None = None  # needed for ReLU/Clip models
    calibration: CalibrationOptions = CalibrationOptions()
    fold_time: bool = False  # synaptic layers run once on rates; neurons output spike counts
    neuron: str = "parallel"  # "parallel" (snn.ParallelSpike) or "if" (the serial IF baseline)
    emit_spikes: tuple[str, ...] = ()  # neuron layers whose spike trains become extra outputs
    drop_signed_qdq: bool = False  # drop Q/DQ pairs on signed ranges between neurons (approximate)
    reconstruct: ReconstructOptions | None = None  # block reconstruction after calibration (needs torch)

    def __post_init__(self):
        if not isinstance(self.steps, (int, np.integer)) or not 1 <= self.steps <= MAX_STEPS:
            raise SnnccError(f"T must be an integer in 1..{MAX_STEPS}, got {self.steps}")
        if self.neuron not in ("parallel", "if"):
            raise SnnccError(f"unknown neuron '{self.neuron}'; expected 'parallel' or 'if'")
        if self.neuron == "if" and self.fold_time:
            raise SnnccError("folding time needs parallel neurons: serial IF neurons depend on the order of their inputs")
        if self.levels is not None and not 1 <= self.levels <= MAX_STEPS:
            raise SnnccError(f"the QCFS levels T̃ must be an integer in 1..{MAX_STEPS}, got {self.levels}")
        if isinstance(self.calibration_data, np.ndarray):  # a bare array: validated like a file's
            object.__setattr__(self, "calibration_data", calibration_from_array(self.calibration_data))


@dataclasses.dataclass(frozen=True)
class LayerSummary:
    """One neuron layer of the compiled SNN, for the CLI's summary."""

    name: str
    source: str
    case: str
    channels: int
    theta_pre: tuple[float, float]
    theta_post: tuple[float, float]
    psi: tuple[float, float]


@dataclasses.dataclass
class CompileResult:
    model: onnx.ModelProto
    layers: list[LayerSummary]


def canonicalize(model: ir.Model, source: str = "model") -> None:
    """Passes that bring any exporter's graph to one form; shared by compile and inspect."""
    # One by one: ir.passes.Sequential would wrap a user error (SnnccError) in a PassError.
    for canonical_pass in (
        NameUnnamedNodesPass(),
        ConvertOpsetPass(ops.TARGET_OPSET),
        FreezeInitializerInputsPass(),
        CanonicalizeQdqPass(),
        FoldConstantsPass(),
        RemoveNoOpsPass(),
        FoldBatchNormPass(),
        MakeBatchDynamicPass(source),
    ):
        canonical_pass(model)


def to_ir(model: onnx.ModelProto | ir.Model) -> ir.Model:
    """The model in onnx_ir; a proto is brought to the target opset on the way where that is cheaper
    there (convert_opset.from_proto_at; canonicalize's ConvertOpsetPass then has nothing to convert)."""
    return model if isinstance(model, ir.Model) else from_proto_at(model, ops.TARGET_OPSET)


def analyse_activations(model: ir.Model, source: str = "model", drop_signed_qdq: bool = False) -> ir.Model:
    """Canonicalise, match activations (and QDQ pairs) and move MaxPools: the ANN as snncc understands it."""
    canonicalize(model, source)
    MatchActivationsPass()(model)
    MatchQdqPass(drop_signed_qdq)(model)
    MoveMaxPoolAfterActivationPass()(model)
    ir.passes.common.TopologicalSortPass()(model)
    return model


def describe_missing_activations(graph: ir.Graph) -> str:
    """Why a graph without ReLU-family activations has nothing to convert, naming what it has instead."""
    others = other_activations(graph)
    found = ", ".join(f"{count} {name}" for name, count in sorted(others.items(), key=lambda kv: -kv[1]))
    if not found:
        return "no activation (ReLU, Clip, QCFS) found: nothing to convert to spiking neurons"
    return f"{found} activation{'s' if sum(others.values()) > 1 else ''}: snncc converts ReLU-family activations only (ReLU, ReLU6/Clip, QCFS)"


def _check_data_needs(model: ir.Model, options: CompileOptions) -> None:
    source = options.source
    activations = [n for n in model.graph if is_activation(n)]
    if not activations:
        raise SnnccError(f"{source}: {describe_missing_activations(model.graph)}")
    if options.levels is not None and not any(read_activation(n).kind == QCFS for n in activations):
        raise SnnccError(f"{source}: QCFS levels T̃ = {options.levels} given, but the model has no QCFS activation "
                         "(its ReLU/Clip thresholds come from calibration data)")
    if options.calibration_data is not None:
        return
    uncalibrated = [n for n in activations if read_activation(n).kind in (RELU, CLIP)]
    if uncalibrated:
        listed = ", ".join(f"'{source_of(n).split(',')[-1]}' ({read_activation(n).kind})" for n in uncalibrated[:5])
        more = f" and {len(uncalibrated) - 5} more" if len(uncalibrated) > 5 else ""
        raise SnnccError(
            f"{source}: {len(uncalibrated)} ReLU/Clip activation(s) {listed}{more} need thresholds recorded on "
            "calibration data, and none was given (a .npy/.npz file, an image folder, an array, or e.g. fashion-mnist:train)"
        )
    if options.calibration.da_qcfs or options.calibration.mode in LAYERWISE_MODES:
        raise SnnccError(f"{source}: calibration ({options.calibration.resolved_mode(options.steps)}) needs calibration "
                         "data (a .npy/.npz file, an image folder, an array, or e.g. fashion-mnist:train)")
    if _reconstruction(options) is not None:
        raise SnnccError(f"{source}: reconstruction needs calibration data (a .npy/.npz file, an image folder, "
                         "an array, or e.g. fashion-mnist:train)")


def _reconstruction(options: CompileOptions) -> ReconstructOptions | None:
    """`options.reconstruct` (`--reconstruct N`, after any mode), else the defaults where the mode is 'reconstruct'."""
    if options.reconstruct is not None:
        return options.reconstruct
    return ReconstructOptions() if options.calibration.resolved_mode(options.steps) == "reconstruct" else None


def compile_model(model: onnx.ModelProto | ir.Model, options: CompileOptions) -> CompileResult:
    """Compile an ANN to a parallel-spiking SNN; raises SnnccError / ConversionError on bad input."""
    graph_model = analyse_activations(to_ir(model), options.source, options.drop_signed_qdq)
    _check_data_needs(graph_model, options)
    SetQcfsParametersPass(options.steps, options.levels)(graph_model)
    calibration = {"done": False}
    if options.calibration_data is not None:
        CheckConvertiblePass(options.source)(graph_model)  # fail before spending time on data
        reconstruction = _reconstruction(options)
        if reconstruction is not None:
            import_torch()  # fail before calibrating when torch is missing
        original = copy_model(graph_model) if reconstruction is not None else None
        calibration = calibrate_parameters(graph_model, options.calibration_data, options.steps, options.calibration)
        if reconstruction is not None:
            from snncc.calibration.reconstruct import reconstruct
            calibration["reconstruct"] = reconstruct(graph_model, original, options.calibration_data, options.steps,
                                                     reconstruction)
    levels = sorted({read_activation(n).levels for n in graph_model.graph
                     if is_activation(n) and read_activation(n).kind == QCFS})
    CheckConvertiblePass(options.source)(graph_model)
    if options.fold_time:
        FoldTimePass(options.steps)(graph_model)
    else:
        ExpandTimePass(options.steps, options.neuron)(graph_model)
    EmitSpikesPass(list(options.emit_spikes), options.steps)(graph_model)
    ir.passes.common.RemoveUnusedNodesPass()(graph_model)
    proto = _finish(graph_model, options, levels, calibration)
    return CompileResult(proto, summarize_layers(proto))


def _finish(model: ir.Model, options: CompileOptions, levels: list[int], calibration: dict) -> onnx.ModelProto:
    """Attach the `snn` functions and metadata, infer shapes, and check the result (both on a copy
    without the weights: the same verdict and shapes without serialising them)."""
    model.opset_imports.pop("snncc.internal", None)
    proto = ir.to_proto(model)
    proto.functions.extend(ops.function_library())
    proto.producer_name = "snncc"
    proto.producer_version = snncc.__version__
    neuron_cases = sorted({_case_of(n) for n in proto.graph.node if ops.is_neuron(n)})
    metadata = {
        "snncc.version": snncc.__version__,
        "snncc.T": str(options.steps),
        "snncc.levels": ",".join(str(options.levels or level) for level in levels),
        "snncc.case": ",".join(neuron_cases),
        "snncc.calibration": json.dumps(calibration, sort_keys=True),
        "snncc.folded": "true" if options.fold_time else "false",
        "snncc.neuron": options.neuron,
    }
    existing = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(existing)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    skeleton = onnx.shape_inference.infer_shapes(without_weights(proto), check_type=True, strict_mode=False,
                                                 data_prop=True)
    onnx.checker.check_model(skeleton, full_check=True)
    inputs = {i.name for i in proto.graph.input}
    name_batch_dims(skeleton, options.steps, inputs - {t.name for t in proto.graph.initializer})
    for field in ("value_info", "output"):
        del getattr(proto.graph, field)[:]
        getattr(proto.graph, field).extend(getattr(skeleton.graph, field))
    del proto.graph.input[:]
    proto.graph.input.extend(i for i in skeleton.graph.input if i.name in inputs)
    return proto


def _case_of(node: onnx.NodeProto) -> str:
    return next((p.value for p in node.metadata_props if p.key == CASE_KEY), "unknown")


def _neuron_parameters(inits: dict[str, onnx.TensorProto], rate_muls: dict[str, onnx.NodeProto],
                       node: onnx.NodeProto) -> list[np.ndarray]:
    """θ_pre, θ_post, ψ of a ParallelSpike node, or of a folded SpikeCount node and its rate Mul
    (`rate_muls`: the first Mul reading each value)."""
    array = lambda name: onnx.numpy_helper.to_array(inits[name]).reshape(-1)  # noqa: E731
    if node.op_type != ops.SPIKE_COUNT:
        return [array(name) for name in node.input[1:4]]
    steps = next(a.i for a in node.attribute if a.name == "T")
    rate = rate_muls[node.output[0]]
    return [array(node.input[1]), array(rate.input[1]) * np.float32(steps), array(node.input[2])]


def summarize_layers(proto: onnx.ModelProto) -> list[LayerSummary]:
    """The neuron layers of a compiled SNN, read back from the graph."""
    layers = []
    inits = {t.name: t for t in proto.graph.initializer}
    rate_muls: dict[str, onnx.NodeProto] = {}
    for node in proto.graph.node:
        if node.op_type == "Mul":
            rate_muls.setdefault(node.input[0], node)
    for node in proto.graph.node:
        if not ops.is_neuron(node):
            continue
        meta = {p.key: p.value for p in node.metadata_props}
        theta_pre, theta_post, psi = _neuron_parameters(inits, rate_muls, node)
        layers.append(LayerSummary(
            name=node.name, source=meta.get("snncc.source", ""), case=_case_of(node),
            channels=int(theta_pre.size),
            theta_pre=(float(theta_pre.min()), float(theta_pre.max())),
            theta_post=(float(theta_post.min()), float(theta_post.max())),
            psi=(float(psi.min()), float(psi.max())),
        ))
    return layers
