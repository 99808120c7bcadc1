"""SNN inference speed against the ANN and the serial-IF baseline, side by side in one run (issue #6).

Three parts, each written to the JSON and to docs/performance.md (`--write-docs`):

1. **Latency** of one forward pass on ONNX Runtime's CPU provider (fixed intra-op threads, no
   spinning), per model, batch size and T, for:
     ann              the ANN as given
     parallel fn      expanded parallel SNN, snn.ParallelSpike as the model-local function
     parallel native  the same graph with the native library registered, the neurons kept in
                      ONNX Runtime's NCHWc layout (snncc.cpu_layout; so for every native SNN)
     folded           `--fold-time`: synaptic layers run once on rates (snn.SpikeCount; native
                      library registered when built)
     serial-IF fn     `--neuron if`, snn.SerialIF as the model-local function (a Scan)
     serial-IF native the same graph with the native library
     spikingjelly     the same architecture in torch, each activation replaced by SpikingJelly's
                      multi-step IFNode (soft reset, membrane initialised to θ/2), run on [T·B]
                      batches like the expanded SNN; random weights (`pip install --no-deps
                      spikingjelly`; the column is empty when it is not installed)
   Models: the bundled Fashion-MNIST models, and the QCFS paper's VGG-16 and ResNet-18 at 32×32
   with random weights (speed does not depend on the weights: every layer is dense).
   Each entry is the best of several timed runs after a warm-up (up to 50 while their total stays
   under ~1 s; at least one). The variants that the target ratios compare (ANN, parallel native,
   folded, serial-IF native) take turns run by run, so that a change in the machine's load hits
   all of them alike, and are timed equally often: at least five times each, and as long as the
   slowest of them stays under ~1 s in all (a best of fifty cheap ANN runs against a best of three
   expensive SNN runs would favour the ANN); the ANN is timed again in every row.
   (Taking turns, each run follows another model's run: small models are timed with colder
   caches than in a block of repeats of their own.)
2. **Accuracy-matched speed** on the Fashion-MNIST ReLU model (1000 test images): the smallest T
   at which the calibrated parallel SNN (max thresholds + DA-QCFS, calibration on 10k training
   images) and the classic serial-IF conversion (max thresholds, membrane θ/2) each come within
   1 point of the ANN, and the batch-1 latency ratio at those T. T = 1024 is tried first for serial
   IF: if it does not get there, its ratio at T = 1024 is a lower bound.
3. **Compile time** of ResNet-50, DenseNet-121 and VGG-19 (the onnx package's "light" test models,
   whose ConstantOfShape weights are materialised as random initializers first; VGG-19 is the
   zoo's largest file, DenseNet-121 its most nodes) at T = 4, with and without the calibration,
   against a plain `onnx.load` + `onnx.save` of the same file.

    python benchmarks/speed.py [--models fmnist-qcfs,fmnist-relu,vgg16,resnet18] [--batches 1,32]
        [--steps 4,8,16,32,64] [--threads 2] [--parts latency,matched,compile]
        [--json out.json] [--write-docs]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# torch (SpikingJelly column) takes turns with ONNX Runtime: its idle OpenMP threads must sleep,
# not spin, or they steal the cores ONNX Runtime is being timed on. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import onnx
import onnxruntime as ort

from _docs import replace_section
from snncc.calibration.dataset import CalibrationData
from snncc import compiler as snncc_compiler
from snncc.calibration.pipeline import CalibrationOptions, calibrate_parameters
from snncc.calibration.thresholds import ThresholdMode
from snncc.compiler import CompileOptions, compile_model
from snncc.cpu_layout import prepare_for_cpu
from snncc.data import load
from snncc.evaluate import top_k_accuracy
from snncc.modelio import load_model, save_model
from snncc.passes._activation import NeuronParameters, get_parameters, is_activation, set_parameters
from snncc.passes._graph import source_of
from snncc.session import native_library_path

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "performance.md"
SECTION = "## Whole-network speed"
sys.path.insert(0, str(REPO))

VARIANTS = ("ann", "parallel fn", "parallel native", "folded", "serial-IF fn", "serial-IF native", "spikingjelly")


# ---------------------------------------------------------------------------------------------
# Models


@dataclasses.dataclass
class Subject:
    name: str
    ann: onnx.ModelProto
    input_shape: tuple[int, ...]  # one sample
    calibration: CalibrationData | None  # ReLU models only
    torch_builder: object  # () -> torch.nn.Module with QCFS/ReLU activations, for SpikingJelly


def _export(module, shape) -> onnx.ModelProto:
    import torch

    buffer = io.BytesIO()
    torch.onnx.export(module.eval(), (torch.rand(2, *shape),), buffer, dynamo=False, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=17)
    return onnx.load_from_string(buffer.getvalue())


def subjects(names: list[str]) -> list[Subject]:
    from models import paper_nets, qcfs

    fmnist_x = load("fashion-mnist", "train")[0]
    result = []
    for name in names:
        if name == "fmnist-qcfs":
            result.append(Subject(name, onnx.load(REPO / "models" / "fmnist_qcfs_vgg_t4.onnx"), (1, 28, 28), None,
                                  lambda: qcfs.build("qcfs", 4, 3.0)))
        elif name == "fmnist-relu":
            result.append(Subject(name, onnx.load(REPO / "models" / "fmnist_relu_vgg.onnx"), (1, 28, 28),
                                  CalibrationData(fmnist_x[:1000], "fashion-mnist:train[:1000]"),
                                  lambda: qcfs.build("relu")))
        elif name in ("vgg16", "resnet18"):
            import torch

            torch.manual_seed(0)
            builder = (lambda n=name: paper_nets.build(n, act="qcfs", levels=4, theta=3.0))
            result.append(Subject(name, _export(builder(), (3, 32, 32)), (3, 32, 32), None, builder))
        else:
            raise SystemExit(f"unknown model '{name}'")
    return result


def compiled(subject: Subject, steps: int, variant: str) -> onnx.ModelProto:
    neuron = "if" if variant.startswith("serial") else "parallel"
    calibration = CalibrationOptions(da_qcfs=False)  # the parameters do not change the cost
    options = CompileOptions(steps=steps, neuron=neuron, fold_time=variant == "folded",
                             calibration_data=subject.calibration, calibration=calibration)
    return compile_model(subject.ann, options).model


# ---------------------------------------------------------------------------------------------
# Timing


def ort_session(model: onnx.ModelProto, threads: int, native: bool) -> ort.InferenceSession:
    """A session on ONNX Runtime's CPU provider; with the native library, the model's neurons kept in
    the NCHWc layout as `snncc.session.make_session(cpu_layout=True)` keeps them."""
    if native:
        model = prepare_for_cpu(model, native_library_path())
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if native:
        options.register_custom_ops_library(str(native_library_path()))
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def best_of_turns(runs: dict[str, Callable[[], object]], budget: float = 1.0, least: int = 1, most: int = 50) -> dict[str, float]:
    """Best time of each run, the runs taking turns: a warm-up each, then rounds in which every run
    goes once, so that all see the machine in the same state, and all are timed equally often (a
    best of many timings would favour a cheap run over an expensive one timed a few times). At
    least `least` rounds, then rounds until there are `most` or the slowest run's timings add up to
    `budget` seconds."""
    for run in runs.values():
        timed(run)
    times: dict[str, list[float]] = {name: [] for name in runs}
    rounds = 0
    while rounds < least or (rounds < most and max(sum(t) for t in times.values()) < budget):
        for name, run in runs.items():
            times[name].append(timed(run))
        rounds += 1
    return {name: min(t) for name, t in times.items()}


def ort_runner(model: onnx.ModelProto, x: np.ndarray, threads: int, native: bool):
    session = ort_session(model, threads, native)
    feed = {session.get_inputs()[0].name: x}
    return lambda: session.run(None, feed)


def spikingjelly_neuron(steps: int, theta: float):
    """Multi-step IF on [T·B, ...] currents: SpikingJelly's IFNode (soft reset), membrane θ/2,
    spikes of value θ."""
    import torch
    from spikingjelly.activation_based import neuron

    class IF(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.node = neuron.IFNode(v_threshold=theta, v_reset=None, step_mode="m")

        def forward(self, x):
            seq = x.reshape(steps, -1, *x.shape[1:])
            self.node.reset()
            self.node.v = torch.full_like(seq[0], theta / 2)
            return (self.node(seq) * theta).reshape(x.shape)

    return IF()


def spikingjelly_runner(subject: Subject, steps: int, x: np.ndarray, threads: int):
    """The torch model with BatchNorm folded into the convolutions and every activation a
    SpikingJelly IF layer; input repeated T times, output averaged over T."""
    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    from models.qcfs import QCFS

    torch.set_num_threads(threads)
    model = subject.torch_builder().eval()

    def rebuild(module: torch.nn.Module) -> None:
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Sequential):
                items = list(child)
                fused = []
                for item in items:
                    if isinstance(item, torch.nn.BatchNorm2d) and fused and isinstance(fused[-1], torch.nn.Conv2d):
                        fused[-1] = fuse_conv_bn_eval(fused[-1], item)
                    else:
                        fused.append(item)
                child = torch.nn.Sequential(*fused)
                setattr(module, name, child)
            if isinstance(child, (QCFS, torch.nn.ReLU)):
                theta = float(child.theta.detach()[0]) if isinstance(child, QCFS) else 1.0
                setattr(module, name, spikingjelly_neuron(steps, theta))
            else:
                rebuild(child)

    rebuild(model)
    inputs = torch.from_numpy(np.concatenate([x] * steps))

    def run():
        with torch.inference_mode():
            return model(inputs).reshape(steps, len(x), -1).mean(0)

    return run


def latency(subjects_: list[Subject], batches: list[int], steps_list: list[int], threads: int) -> list[dict]:
    have_native = native_library_path() is not None
    try:
        import spikingjelly  # noqa: F401
        have_spikingjelly = True
    except ImportError:
        have_spikingjelly = False
    rows = []
    for subject in subjects_:
        for batch in batches:
            x = np.random.default_rng(0).uniform(0, 1, (batch, *subject.input_shape)).astype(np.float32)
            ann = ort_runner(subject.ann, x, threads, native=False)
            for steps in steps_list:
                expanded = compiled(subject, steps, "parallel")
                serial = compiled(subject, steps, "serial-IF")
                # The ratios' terms take turns (best_of_turns), the ANN in every row; at least five
                # timings each, as a single one of a multi-second run can be 20% off on this machine.
                turns = {"ann": ann,
                         "folded": ort_runner(compiled(subject, steps, "folded"), x, threads, native=have_native)}
                if have_native:
                    turns["parallel native"] = ort_runner(expanded, x, threads, native=True)
                    turns["serial-IF native"] = ort_runner(serial, x, threads, native=True)
                measured = best_of_turns(turns, least=5)
                del turns
                measured["parallel fn"] = best_of_turns({"run": ort_runner(expanded, x, threads, native=False)})["run"]
                measured["serial-IF fn"] = best_of_turns({"run": ort_runner(serial, x, threads, native=False)})["run"]
                del expanded, serial
                if have_spikingjelly:
                    measured["spikingjelly"] = best_of_turns({"run": spikingjelly_runner(subject, steps, x, threads)})["run"]
                seconds = {v: measured[v] for v in VARIANTS if v in measured}
                row = {"model": subject.name, "batch": batch, "T": steps, "seconds": seconds}
                print(f"  {subject.name} B={batch} T={steps}: "
                      + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in seconds.items()), file=sys.stderr)
                rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Accuracy-matched speed


def accuracy_matched(threads: int, images: int, calibration_samples: int) -> dict:
    ann = onnx.load(REPO / "models" / "fmnist_relu_vgg.onnx")
    x_test, y_test = load("fashion-mnist", "test")
    x, y = x_test[:images], y_test[:images]
    calib = CalibrationData(load("fashion-mnist", "train")[0][:calibration_samples],
                            f"fashion-mnist:train[:{calibration_samples}]")

    def accuracy(model: onnx.ModelProto, batch: int) -> float:
        session = ort_session(model, threads, native=native_library_path() is not None)
        name = session.get_inputs()[0].name
        logits = np.concatenate([session.run(None, {name: x[s:s + batch]})[0] for s in range(0, len(x), batch)])
        return top_k_accuracy(logits, y)

    def compile_at(steps: int, neuron: str, da_qcfs: bool, fold: bool = False) -> onnx.ModelProto:
        options = CompileOptions(steps=steps, neuron=neuron, fold_time=fold, calibration_data=calib,
                                 calibration=CalibrationOptions(ThresholdMode(None), da_qcfs=da_qcfs))
        return compile_model(ann, options).model

    ann_accuracy = accuracy(ann, 250)
    print(f"  ANN on {images} images: {ann_accuracy:.4f}", file=sys.stderr)

    parallel = {}
    parallel_t = None
    for steps in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32):
        parallel[steps] = accuracy(compile_at(steps, "parallel", True), 100)
        print(f"  parallel calibrated T={steps}: {parallel[steps]:.4f}", file=sys.stderr)
        if parallel[steps] >= ann_accuracy - 0.01:
            parallel_t = steps
            break

    serial = {}
    serial_t = None
    batch_for = lambda steps: max(1, 2048 // steps)  # noqa: E731 - rows per ORT call ≈ 2048
    serial[1024] = accuracy(compile_at(1024, "if", False), batch_for(1024))
    print(f"  serial IF T=1024: {serial[1024]:.4f}", file=sys.stderr)
    if serial[1024] >= ann_accuracy - 0.01:
        serial_t = 1024
        for steps in (512, 256, 128, 64, 32, 16):  # down while it still gets there
            serial[steps] = accuracy(compile_at(steps, "if", False), batch_for(steps))
            print(f"  serial IF T={steps}: {serial[steps]:.4f}", file=sys.stderr)
            if serial[steps] < ann_accuracy - 0.01:
                break
            serial_t = steps
    else:
        for steps in (32, 256):
            serial[steps] = accuracy(compile_at(steps, "if", False), batch_for(steps))
            print(f"  serial IF T={steps}: {serial[steps]:.4f}", file=sys.stderr)

    t_serial = serial_t or 1024
    t_parallel = parallel_t or max(parallel)
    one = x[:1]
    timing = best_of_turns(least=5, runs={
        "ann": ort_runner(ann, one, threads, native=False),
        "serial-IF native": ort_runner(compile_at(t_serial, "if", False), one, threads, native=True),
        "parallel native": ort_runner(compile_at(t_parallel, "parallel", True), one, threads, native=True),
        "folded": ort_runner(compile_at(t_parallel, "parallel", True, fold=True), one, threads,
                             native=native_library_path() is not None),
    })
    return {
        "images": images, "calibration_samples": calibration_samples, "ann_accuracy": ann_accuracy,
        "parallel_accuracy": {str(k): v for k, v in parallel.items()}, "parallel_T": parallel_t,
        "serial_accuracy": {str(k): v for k, v in sorted(serial.items())}, "serial_T": serial_t,
        "timed_T": {"serial": t_serial, "parallel": t_parallel},
        "batch1_seconds": timing,
        "speedup_expanded": timing["serial-IF native"] / timing["parallel native"],
        "speedup_folded": timing["serial-IF native"] / timing["folded"],
        "speedup_is_lower_bound": serial_t is None,
    }


# ---------------------------------------------------------------------------------------------
# Compile time


def materialised(path: Path) -> onnx.ModelProto:
    """The light model with each ConstantOfShape weight replaced by a random initializer."""
    model = onnx.load(path)
    model.ir_version = max(model.ir_version, 4)  # initializers need not be graph inputs (opset 9 allows it)
    graph = model.graph
    shapes = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    rng = np.random.default_rng(0)
    keep = []
    for node in graph.node:
        if node.op_type == "ConstantOfShape" and node.input[0] in shapes:
            shape = shapes[node.input[0]].astype(np.int64)
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            values = rng.normal(0, np.sqrt(2 / max(fan_in, 1)), shape).astype(np.float32)
            if len(shape) == 1:  # BN scale / variance style vectors: keep them positive
                values = np.abs(values) + 0.5
            graph.initializer.append(onnx.numpy_helper.from_array(values, node.output[0]))
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    used = {name for node in graph.node for name in node.input}
    inits = [t for t in graph.initializer if t.name in used]
    dropped = {t.name for t in graph.initializer} - used  # the shapes of the materialised weights
    del graph.initializer[:]
    graph.initializer.extend(inits)
    inputs = [i for i in graph.input if i.name not in dropped]
    del graph.input[:]
    graph.input.extend(inputs)
    return model


class RecordedCalibration:
    """Stands in for `calibrate_parameters` in snncc.compiler: the first call calibrates and keeps
    every activation's neuron parameters; later calls (the same model and data) set them again
    without touching the data, so that a compile is timed without its calibration."""

    def __init__(self):
        self.parameters: dict[str, NeuronParameters] = {}
        self.summary: dict | None = None

    def __call__(self, model, data, steps, options) -> dict:
        activations = [n for n in model.graph if is_activation(n)]
        if self.summary is None:
            self.summary = calibrate_parameters(model, data, steps, options)
            self.parameters = {source_of(n): get_parameters(n) for n in activations}
        for node in activations:
            set_parameters(node, self.parameters[source_of(node)])
        return self.summary


COMPILE_MODELS = ("light_resnet50", "light_densenet121", "light_vgg19")  # light_vgg19: the zoo's largest file


def best_wall_and_cpu(runs: dict[str, Callable[[], object]], rounds: int = 3) -> dict[str, tuple[float, float]]:
    """Best wall-clock and best process CPU time of each run, the runs taking turns after a
    warm-up each. CPU time (all threads of this process, system time included) hardly moves with
    the other processes on a shared machine; wall time does."""
    for run in runs.values():
        run()
    best = {name: (float("inf"), float("inf")) for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


def compile_time() -> list[dict]:
    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in COMPILE_MODELS:
            path = Path(tmp) / f"{name}.onnx"
            onnx.save(materialised(light / f"{name}.onnx"), path)
            copy = Path(tmp) / f"{name}.copy.onnx"

            def load_save():
                onnx.save(onnx.load(path), copy)

            x = np.random.default_rng(0).uniform(0, 1, (2, 3, 224, 224)).astype(np.float32)
            data = CalibrationData(x, "uniform random, 2 images")
            out = Path(tmp) / f"{name}.snn.onnx"
            options = CompileOptions(steps=4, calibration_data=data, calibration=CalibrationOptions(da_qcfs=False))

            def snncc_compile():
                save_model(compile_model(load_model(path), options).model, out)

            recorded = RecordedCalibration()

            def snncc_compile_recorded():
                real, snncc_compiler.calibrate_parameters = snncc_compiler.calibrate_parameters, recorded
                try:
                    snncc_compile()
                finally:
                    snncc_compiler.calibrate_parameters = real

            best = best_wall_and_cpu({"load_save": load_save, "compile": snncc_compile,
                                      "compile_without_calibration": snncc_compile_recorded})
            model = onnx.load(path, load_external_data=False)
            row = {"model": name.removeprefix("light_"), "nodes": len(model.graph.node),
                   "megabytes": round(path.stat().st_size / 2**20, 1)}
            for clock, index in (("", 0), ("cpu_", 1)):
                base = best["load_save"][index]
                row.update({f"{clock}load_save_seconds": base, f"{clock}compile_seconds": best["compile"][index],
                            f"{clock}ratio": best["compile"][index] / base,
                            f"{clock}compile_without_calibration_seconds": best["compile_without_calibration"][index],
                            f"{clock}ratio_without_calibration": best["compile_without_calibration"][index] / base})
            rows.append(row)
            print(f"  {name}: load+save {row['load_save_seconds']:.2f} s (CPU {row['cpu_load_save_seconds']:.2f}), "
                  f"compile {row['compile_seconds']:.2f} s, without calibration "
                  f"{row['compile_without_calibration_seconds']:.2f} s (CPU {row['cpu_compile_without_calibration_seconds']:.2f})",
                  file=sys.stderr)
    return rows


# ---------------------------------------------------------------------------------------------
# Report


def machine(threads: int) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "threads": threads, "onnxruntime": ort.__version__,
            "load_average_1min_at_start": os.getloadavg()[0]}


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1e3:,.1f}" if seconds < 10 else f"{seconds * 1e3:,.0f}"


def markdown(report: dict) -> str:
    m = report["machine"]
    out = [f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs; ONNX Runtime {m['onnxruntime']} CPU provider, "
           f"{m['threads']} intra-op threads (torch: the same count); load average {m['load_average_1min_at_start']:.1f} "
           "when the run started. Latency of one forward pass in ms (best of several runs).", ""]
    if report.get("latency"):
        out += ["### Latency", "",
                "Ratios: *exp/(T·ANN)* = parallel native ÷ (T × ANN) (target ≤ 1.15); *fold/ANN* = folded ÷ ANN "
                "(target ≤ 1.3); *IF/par* = serial-IF native ÷ parallel native (target ≥ 1).", "",
                "| model | B | T | " + " | ".join(VARIANTS) + " | exp/(T·ANN) | fold/ANN | IF/par |",
                "|---|---:|---:|" + "---:|" * (len(VARIANTS) + 3)]
        for row in report["latency"]:
            s = row["seconds"]
            ratio = lambda a, b: "—" if a not in s or b not in s else f"{s[a] / s[b]:.2f}"  # noqa: E731
            expanded = "—" if "parallel native" not in s else f"{s['parallel native'] / (row['T'] * s['ann']):.2f}"
            out.append(f"| {row['model']} | {row['batch']} | {row['T']} | "
                       + " | ".join(_ms(s.get(v)) for v in VARIANTS)
                       + f" | {expanded} | {ratio('folded', 'ann')} | {ratio('serial-IF native', 'parallel native')} |")
        out.append("")
    if report.get("matched"):
        r = report["matched"]
        lower = " (lower bound: serial IF never came within 1 point up to T = 1024)" if r["speedup_is_lower_bound"] else ""
        acc = lambda d: ", ".join(f"T={k}: {100 * v:.1f}%" for k, v in d.items())  # noqa: E731
        t = r["batch1_seconds"]
        out += ["### Accuracy-matched speed (Fashion-MNIST ReLU VGG)", "",
                f"{r['images']} test images; ANN {100 * r['ann_accuracy']:.1f}%. Within 1 point of the ANN:",
                "",
                f"- parallel, calibrated (max + DA-QCFS, {r['calibration_samples']} calibration images): "
                f"T = {r['parallel_T']} ({acc(r['parallel_accuracy'])})",
                f"- serial IF, classic conversion (max thresholds, membrane θ/2): "
                f"T = {r['serial_T'] or '> 1024'} ({acc(r['serial_accuracy'])})",
                "",
                "| batch-1 latency | T | ms |", "|---|---:|---:|",
                f"| ANN | – | {_ms(t['ann'])} |",
                f"| serial IF, native | {r['timed_T']['serial']} | {_ms(t['serial-IF native'])} |",
                f"| parallel expanded, native | {r['timed_T']['parallel']} | {_ms(t['parallel native'])} |",
                f"| parallel folded | {r['timed_T']['parallel']} | {_ms(t['folded'])} |",
                "",
                f"Speed-up at matched accuracy: expanded parallel **{r['speedup_expanded']:.0f}×** (target ≥ 10×), "
                f"folded **{r['speedup_folded']:.0f}×** (target ≥ 100×){lower}.", ""]
    if report.get("compile"):
        out += ["### Compile time (T = 4)", "",
                "`load_model` + `compile_model` (passes, threshold recording on 2 random images, no DA-QCFS) + "
                "`save_model`, against `onnx.load` + `onnx.save` of the same file; *without calibration*: the "
                "same with the thresholds recorded by an earlier compile set again instead of recorded "
                "(target < 5× load + save). Best of 3 after a warm-up, the three taking turns; wall-clock "
                "time and the process's CPU time (all threads; the calibration's ONNX Runtime runs on 2).", "",
                "| model | nodes | MB | clock | load + save (s) | compile (s) | ratio | without calibration (s) | ratio |",
                "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
        for row in report["compile"]:
            for clock, label in (("", "wall"), ("cpu_", "CPU")):
                out.append(f"| {row['model']} | {row['nodes']} | {row['megabytes']} | {label} | "
                           f"{row[clock + 'load_save_seconds']:.2f} | {row[clock + 'compile_seconds']:.2f} | "
                           f"{row[clock + 'ratio']:.1f}× | {row[clock + 'compile_without_calibration_seconds']:.2f} | "
                           f"{row[clock + 'ratio_without_calibration']:.1f}× |")
        out.append("")
    return "\n".join(out)


def write_docs_section(table: str, section: str = SECTION, intro: str = "") -> None:
    """Replaces (or appends) one section of docs/performance.md that this script owns, nothing else."""
    replace_section(DOCS, section, f"{section}\n\nMeasured by `benchmarks/speed.py` (see its docstring for the "
                    f"variants), one run. {intro}\n\n{table}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fmnist-qcfs,fmnist-relu,vgg16,resnet18")
    parser.add_argument("--batches", default="1,32")
    parser.add_argument("--steps", default="4,8,16,32,64")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parts", default="latency,matched,compile")
    parser.add_argument("--matched-images", type=int, default=1000)
    parser.add_argument("--calibration-samples", type=int, default=10000)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--write-docs", action="store_true")
    parser.add_argument("--docs-section", default=SECTION, help="the '## ...' heading of the section to write")
    parser.add_argument("--docs-intro", default="", help="a sentence after the section's first line")
    args = parser.parse_args()
    parts = args.parts.split(",")
    report = {"machine": machine(args.threads)}
    if "latency" in parts:
        report["latency"] = latency(subjects(args.models.split(",")), [int(b) for b in args.batches.split(",")],
                                    [int(t) for t in args.steps.split(",")], args.threads)
    if "matched" in parts:
        report["matched"] = accuracy_matched(args.threads, args.matched_images, args.calibration_samples)
    if "compile" in parts:
        report["compile"] = compile_time()
    table = markdown(report)
    print(table)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.write_docs:
        write_docs_section(table, args.docs_section, args.docs_intro)


if __name__ == "__main__":
    main()
