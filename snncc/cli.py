"""The `snncc` command line: parsing, progress and printing only; the work is in the modules."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import sys
import warnings
from pathlib import Path

import click

from snncc.errors import SnnccError, SnnccWarning


def _show_warning(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, SnnccWarning):
        click.echo(f"snncc: warning: {message}", err=True)
    else:
        click.echo(warnings.formatwarning(message, category, filename, lineno, line), err=True, nl=False)


def _user_errors(command):
    """Print user errors as one line and exit 2; internal errors keep their traceback (exit 1).
    SnnccWarnings print as one line `snncc: warning: ...` each."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("always", SnnccWarning)
            warnings.showwarning = _show_warning
            try:
                return command(*args, **kwargs)
            except SnnccError as error:
                click.echo(f"snncc: error: {error}", err=True)
                sys.exit(2)
    return wrapper


def _load_calibration(model, model_path: Path, calib_spec: str | None, calib_samples: int | None,
                      preprocess: str | None):
    """--calib data, validated against the model and checked on the ANN (one summary line); or None."""
    from snncc.calibration.dataset import load_calibration_data
    from snncc.calibration.sanity import check_calibration
    from snncc.modelio import model_input_shape

    if calib_spec is None:
        if preprocess or calib_samples is not None:
            flag = "--preprocess" if preprocess else "--calib-samples"
            raise SnnccError(f"{flag} applies to calibration data, and no --calib was given")
        return None
    data = load_calibration_data(calib_spec, model_input_shape(model, str(model_path)), calib_samples, preprocess)
    check = check_calibration(model, data)
    if check is not None:
        click.echo(check.summary)
    return data


def ray_options(command):
    """The scale-out options (snncc.ray_runtime.RayOptions.from_cli reads them): --ray [ADDRESS],
    --ray-actors N, --ray-gpus-per-actor G. The command gets ray_address, ray_actors, ray_gpus_per_actor."""
    options = [
        click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
                     help="Run on Ray (pip install 'snncc[ray]'): alone, $RAY_ADDRESS or a private local "
                          "instance; with ADDRESS (host:port), that cluster. Put it after the model path."),
        click.option("--ray-actors", type=click.IntRange(min=1), help="With --ray: actors (default: one per CPU)."),
        click.option("--ray-gpus-per-actor", type=click.FloatRange(min=0),
                     help="With --ray: GPUs per actor (> 0: the CUDA provider; default 0)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _calibration_executor(ray):
    """Where calibration passes run: Ray actors with `--ray` (a context that connects), else here (None)."""
    if ray is None:
        return contextlib.nullcontext()
    from snncc.calibration.ray_calibration import ray_executor

    return ray_executor(ray)


def _sweep_cells(ray, here):
    """Where sweep cells run: on Ray actors with `--ray` (a context that connects), else `here`."""
    if ray is None:
        return contextlib.nullcontext(here)
    from snncc.ray_sweep import ray_cells

    return ray_cells(ray)


FOLD_HINT_STEPS = 16  # from this T on, compile suggests --fold-time


class _OneLineUsageErrors(click.Group):
    """Bad options and arguments are user errors too: one line, exit 2."""

    def main(self, *args, **kwargs):
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)  # as click says it
            sys.exit(1)
        except click.exceptions.ClickException as error:
            if isinstance(error, click.exceptions.NoArgsIsHelpError):
                click.echo(error.ctx.get_help() if error.ctx else str(error))
                sys.exit(0)
            click.echo(f"snncc: error: {error.format_message()}", err=True)
            sys.exit(2)
        except click.exceptions.Exit as done:
            sys.exit(done.exit_code)


@click.group(cls=_OneLineUsageErrors)
@click.version_option(package_name="snncc")
def main():
    """Compile ANN ONNX models into parallel-spiking SNN ONNX models."""


def _print_qdq_summary(model) -> None:
    from snncc.passes.match_qdq import qdq_summary

    summary = qdq_summary({p.key: p.value for p in model.metadata_props})
    if summary is None:
        return
    click.echo(f"QDQ: {summary['activations']} quantised activations became neuron layers")
    if summary["dropped_signed_pairs"]:
        click.echo(f"approximate: dropped {len(summary['dropped_signed_pairs'])} signed Q/DQ pair(s) between neurons "
                   f"({', '.join(summary['dropped_signed_pairs'])}); the SNN does not equal the QDQ model")


@main.command("compile")
@click.argument("model_path", metavar="IN.onnx", type=click.Path(path_type=Path))
@click.option("--T", "steps", type=int, required=True, help="Number of SNN time-steps T.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output file (default IN.snn.onnx).")
@click.option("--levels", type=int, help="QCFS quantisation levels T̃ (default: read from the graph).")
@click.option("--calib", "calib_spec", help="Calibration data: .npy, .npz (array x), an image folder, or dataset:split.")
@click.option("--calib-samples", type=int, help="Use the first N calibration samples.")
@click.option("--preprocess", help="For image folders: e.g. 'resize=32,crop=28,mean=0.5,std=0.25'.")
@click.option("--threshold", default="max", show_default=True, help="ReLU thresholds: 'max', a percentile such as p99.9, or 'mse' (least quantisation error at T).")
@click.option("--calibrate", "calibrate", is_flag=False, flag_value="auto", default="auto", show_default=True,
              type=click.Choice(["auto", "paper", "thresholds", "layerwise", "ridge", "reconstruct"]),
              help="Calibration mode: 'auto' picks by T (docs/results.md); 'paper': max thresholds + DA-QCFS; "
                   "'thresholds': thresholds only; 'layerwise': per-layer θ/ψ fit + least-squares read-out; "
                   "'ridge': the same with a ridge refit of the weights feeding each neuron; "
                   "'reconstruct': 'ridge', then gradient block reconstruction (the best at few T; needs torch: snncc[reconstruct]).")
@click.option("--no-calibrate", is_flag=True, help="Thresholds only (the same as --calibrate thresholds).")
@click.option("--keep-head", is_flag=True, help="Layer-wise modes: leave the read-out layer's weights untouched.")
@click.option("--momentum", type=click.FloatRange(0, 1, max_open=True), default=0.99, show_default=True, help="DA-QCFS momentum α.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Calibration batch size; each batch is one DA-QCFS momentum update.")
@click.option("--calib-rounds", type=click.IntRange(min=1), metavar="W",
              help="DA-QCFS in synchronous rounds of W batches, one per worker: an approximation (each round starts from the same psi/phi; README, Scaling out).")
@click.option("--neuron", type=click.Choice(["parallel", "if"]), default="parallel", show_default=True,
              help="Parallel spiking neurons, or the serial IF baseline.")
@click.option("--fold-time", is_flag=True, help="Run synaptic layers once on rates; neurons output spike counts.")
@click.option("--emit-spikes", multiple=True, metavar="NAME", help="Also output this neuron layer's spike train (repeatable).")
@click.option("--reconstruct", "reconstruct_iterations", type=click.IntRange(min=1), metavar="ITERATIONS",
              help="After any calibration mode, refine each neuron block by gradient (Adam steps per block; "
                   "with --calibrate reconstruct: instead of its default; needs torch: snncc[reconstruct]).")
@click.option("--reconstruct-weights/--reconstruct-biases-only", default=True, show_default=True,
              help="Reconstruction: refine the weights of the affine layers next to each neuron too, or only their biases.")
@click.option("--drop-signed-qdq", is_flag=True,
              help="QDQ models: drop Q/DQ pairs on signed ranges between neurons (the SNN then approximates the model).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--print-runtime", is_flag=True, help="Say which implementation of the snn ops will run.")
@ray_options
@_user_errors
def compile_command(model_path: Path, steps: int, output: Path | None, levels: int | None, calib_spec: str | None,
                    calib_samples: int | None, preprocess: str | None, threshold: str, calibrate: str, no_calibrate: bool,
                    keep_head: bool, momentum: float, batch_size: int, calib_rounds: int | None, neuron: str, fold_time: bool,
                    emit_spikes: tuple[str, ...], reconstruct_iterations: int | None, reconstruct_weights: bool,
                    drop_signed_qdq: bool, force: bool, print_runtime: bool, ray_address: str | None,
                    ray_actors: int | None, ray_gpus_per_actor: float | None):
    """Compile IN.onnx into a spiking model with T time-steps."""
    from snncc.calibration.pipeline import CalibrationOptions
    from snncc.calibration.thresholds import ThresholdMode
    from snncc.compiler import CompileOptions, compile_model
    from snncc.modelio import check_output_path, default_output, load_model, save_model
    from snncc.ray_runtime import RayOptions
    from snncc.report import layer_table

    output = output or default_output(model_path)
    mode = "thresholds" if no_calibrate else calibrate
    calibration = CalibrationOptions(ThresholdMode.parse(threshold), {"paper": True, "thresholds": False}.get(mode),
                                     momentum, batch_size, mode=mode, keep_head=keep_head, rounds=calib_rounds)
    ray = RayOptions.from_cli(ray_address, ray_actors, ray_gpus_per_actor)
    if (ray is not None or calib_rounds is not None) and calib_spec is None:
        raise SnnccError(f"{'--ray' if ray is not None else '--calib-rounds'} applies to calibration, and no --calib was given")
    if calib_rounds is not None and calibration.resolved_mode(steps) != "paper":
        raise SnnccError(f"--calib-rounds applies to DA-QCFS calibration (--calibrate paper); at T={steps} the mode is "
                         f"'{calibration.resolved_mode(steps)}'")
    options = CompileOptions(steps=steps, levels=levels, source=str(model_path), calibration=calibration,
                             neuron=neuron, fold_time=fold_time, emit_spikes=emit_spikes,
                             drop_signed_qdq=drop_signed_qdq)
    if reconstruct_iterations is not None or mode == "reconstruct":
        from snncc.calibration.reconstruct import ReconstructOptions, import_torch
        import_torch()  # fail before reading the calibration data when torch is missing
        reconstruction = ReconstructOptions(reconstruct_iterations or ReconstructOptions.iterations, weights=reconstruct_weights)
        options = dataclasses.replace(options, reconstruct=reconstruction)
    model = load_model(model_path)
    check_output_path(output, model_path, force)
    data = _load_calibration(model, model_path, calib_spec, calib_samples, preprocess)
    if data is not None:
        options = dataclasses.replace(options, calibration_data=data)
    with _calibration_executor(ray) as executor:
        if executor is not None:
            options = dataclasses.replace(options, calibration=dataclasses.replace(calibration, executor=executor))
        result = compile_model(model, options)
    click.echo(layer_table(result.layers))
    save_model(result.model, output)
    click.echo(f"wrote {output}: T={steps}, {len(result.layers)} neuron layers")
    if neuron == "parallel" and not fold_time and steps >= FOLD_HINT_STEPS:
        click.echo(f"note: this time-expanded SNN runs its synaptic layers on T={steps} times the batch; "
                   "--fold-time gives the same outputs with them run once", err=True)
    _print_qdq_summary(result.model)
    if print_runtime:
        from snncc.session import runtime_description
        click.echo(runtime_description(result.model))


@main.command("prepare-cpu")
@click.argument("model_path", metavar="MODEL.snn.onnx", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output file (default MODEL.snn.cpu.onnx).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@_user_errors
def prepare_cpu_command(model_path: Path, output: Path | None, force: bool):
    """Write a compiled SNN for ONNX Runtime's CPU provider on this machine: its neurons kept in ONNX
    Runtime's NCHWc layout (fewer copies, the same outputs to float rounding). It needs the native library,
    this onnxruntime version and this kind of CPU."""
    from snncc.cpu_layout import blocked_neurons, is_prepared, nchwc_block_size, prepare_for_cpu
    from snncc.errors import SnnccError
    from snncc.modelio import check_output_path, load_model, save_model
    from snncc.ops import is_neuron
    from snncc.session import native_library_path

    model = load_model(model_path)
    if not any(is_neuron(n) for n in model.graph.node):
        raise SnnccError(f"{model_path}: no snn neuron ops; compile the ANN first (snncc compile)")
    if is_prepared(model):
        raise SnnccError(f"{model_path}: already prepared for ONNX Runtime's CPU provider; prepare the compiled model")
    library = native_library_path()
    if library is None:
        raise SnnccError("prepare-cpu needs the native library libsnncc_ops.so (build it with `make native`)")
    output = output or model_path.with_suffix(".cpu.onnx")
    check_output_path(output, model_path, force)
    prepared = prepare_for_cpu(model, library)
    save_model(prepared, output)
    layers, blocked = blocked_neurons(prepared)
    click.echo(f"wrote {output}: {blocked} of {layers} neuron layers in NCHWc (channel block "
               f"{nchwc_block_size()}); run it on this machine's ONNX Runtime CPU provider with {library.name}")


@main.command("inspect")
@click.argument("model_path", metavar="FILE.onnx", type=click.Path(path_type=Path))
@_user_errors
def inspect_command(model_path: Path):
    """Summarise an ANN (activations, convertible or not) or a compiled SNN (T, neurons)."""
    from snncc.inspection import describe
    from snncc.modelio import load_model

    click.echo(describe(load_model(model_path), str(model_path)))


@main.command("eval")
@click.argument("model_path", metavar="MODEL.snn.onnx", type=click.Path(path_type=Path))
@click.option("--data", "data_spec", required=True, help="'fashion-mnist:test', 'mnist:test', a .npz (x, y) / .npy file, "
              "or a .parquet file (x, label) / a folder of .parquet or .npy shards.")
@click.option("--labels", "labels_spec", help="Labels (.npy, or .npz with array y) when --data has none.")
@click.option("--ann", "ann_path", type=click.Path(path_type=Path), help="The ANN to compare with.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the report as JSON.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Inputs per run (default 256; time-expanded graphs: 2048/T).")
@click.option("--force", is_flag=True, help="Overwrite an existing --json file.")
@ray_options
@_user_errors
def eval_command(model_path: Path, data_spec: str, labels_spec: str | None, ann_path: Path | None,
                 json_path: Path | None, batch_size: int, force: bool, ray_address: str | None,
                 ray_actors: int | None, ray_gpus_per_actor: float | None):
    """Accuracy, agreement with the ANN, firing rates, SOPs and energy of a compiled SNN."""
    from snncc.data import load_spec, open_rows
    from snncc.evaluate import (SnnEvaluation, ann_probe, check_labels, evaluate_ann, load_labels,
                                lossless_residue)
    from snncc.modelio import check_output_file, load_model
    from snncc.ray_runtime import RayOptions
    from snncc.report import write_atomic

    on_ray = RayOptions.from_cli(ray_address, ray_actors, ray_gpus_per_actor)
    snn = load_model(model_path)
    x, y = open_rows(data_spec) if on_ray else load_spec(data_spec)  # on Ray: a RowSource, read by the actors
    rows = x.rows if on_ray else len(x)
    y = load_labels(labels_spec, rows) if labels_spec else (None if y is None else check_labels(y, rows, data_spec))
    if json_path is not None:
        check_output_file(json_path, force)
    checked = x.read(0, 1) if on_ray else x
    evaluation = SnnEvaluation(snn, str(model_path), checked, data_spec)
    ann = load_model(ann_path) if ann_path is not None else None
    if on_ray:
        from snncc.ray_eval import evaluate_on_ray

        if ann is not None:
            ann_probe(ann, str(ann_path), checked, y)
        report, reference = evaluate_on_ray(evaluation, x, y, ann, str(ann_path), batch_size, on_ray)
    else:
        reference = evaluate_ann(ann, x, y, str(ann_path), batch_size) if ann is not None else None
        report = evaluation.run(y, reference, batch_size)
    if reference is not None and "qcfs-lossless" in report.metadata.get("snncc.case", "").split(","):
        report.residue = lossless_residue(snn, ann, x, report.logits, reference.logits)
    click.echo(report.format_text())
    if json_path is not None:
        write_atomic(json_path, report.to_json_text())
        click.echo(f"wrote {json_path}")


@main.command("sweep")
@click.argument("model_path", metavar="ANN.onnx", type=click.Path(path_type=Path))
@click.option("--T", "steps_text", default="2,4,8,16,32,64", show_default=True, help="Comma-separated time-steps.")
@click.option("--data", "data_spec", required=True, help="'fashion-mnist:test', 'mnist:test', or a .npz (x, y) / .npy file.")
@click.option("--labels", "labels_spec", help="Labels (.npy, or .npz with array y) when --data has none.")
@click.option("--calib", "calib_spec", help="Calibration data (needed for ReLU models and for QCFS + DA-QCFS at T ≠ T̃).")
@click.option("--calib-samples", type=int, help="Use the first N calibration samples.")
@click.option("--preprocess", help="For calibration image folders: e.g. 'resize=32,crop=28,mean=0.5,std=0.25'.")
@click.option("--variants", "variants_text", help="Comma-separated subset of: qcfs, qcfs+cal, qcfs-if, relu-thr, relu+cal, relu-if (default: all that apply).")
@click.option("-o", "--output", "prefix", type=click.Path(path_type=Path),
              help="Output prefix: writes PREFIX.csv, PREFIX.json, PREFIX.png (default ./<model>.sweep).")
@click.option("--fold-time/--expand-time", default=True, show_default=True,
              help="Evaluate the parallel SNNs folded (synaptic layers run once) or time-expanded; the outputs are the same.")
@click.option("--serial-if", is_flag=True,
              help="Also run the serial-IF baseline (always time-expanded: T times the ANN's cost per input).")
@click.option("--plot/--no-plot", default=True, show_default=True, help="Write PREFIX.png (needs matplotlib: snncc[plot]).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Inputs per run (default 256; time-expanded graphs: 2048/T).")
@click.option("--force", is_flag=True, help="Overwrite existing PREFIX.csv / .json / .png files.")
@ray_options
@_user_errors
def sweep_command(model_path: Path, steps_text: str, data_spec: str, labels_spec: str | None, calib_spec: str | None,
                  calib_samples: int | None, preprocess: str | None, variants_text: str | None, prefix: Path | None,
                  fold_time: bool, serial_if: bool, plot: bool, batch_size: int, force: bool, ray_address: str | None,
                  ray_actors: int | None, ray_gpus_per_actor: float | None):
    """Compile ANN.onnx at several T (with and without calibration) and evaluate each SNN."""
    from snncc.data import load_spec
    from snncc.evaluate import check_labels, load_labels
    from snncc.modelio import check_output_file, load_model
    from snncc.ray_runtime import RayOptions
    from snncc.sweep import (have_matplotlib, model_info, output_paths, parse_steps, planned_runs, run_cells_here,
                             run_sweep, select_variants, write_outputs)

    steps = parse_steps(steps_text)
    ray = RayOptions.from_cli(ray_address, ray_actors, ray_gpus_per_actor)
    model = load_model(model_path)
    prefix = prefix or Path(f"{model_path.name.removesuffix('.onnx')}.sweep")
    if plot and not have_matplotlib():
        click.echo("note: matplotlib is not installed (pip install 'snncc[plot]'): no plot", err=True)
        plot = False
    for path in output_paths(prefix, plot):
        check_output_file(path, force)
    variants = [v.strip() for v in variants_text.split(",") if v.strip()] if variants_text else None
    info = model_info(model, str(model_path))
    chosen = select_variants(info, variants, calib_spec is not None, serial_if)  # fail before any work
    x, y = load_spec(data_spec)
    y = load_labels(labels_spec, len(x)) if labels_spec else (None if y is None else check_labels(y, len(x), data_spec))
    calibration = _load_calibration(model, model_path, calib_spec, calib_samples, preprocess)
    runs = planned_runs(info, chosen, steps, calibration is not None)
    click.echo(f"sweep: {len(runs)} runs (T x variant) on {len(x)} inputs, parallel SNNs "
               f"{'folded' if fold_time else 'time-expanded'}"
               + ("" if any(v.baseline for v in chosen) else "; serial-IF baseline not run (add it with --serial-if)"),
               err=True)
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # calibration sessions warn about every unused initializer
    with _sweep_cells(ray, run_cells_here) as run_cells:
        result = run_sweep(model, str(model_path), steps, x, y, data_spec, calibration, variants, batch_size, fold_time,
                           echo=lambda line: click.echo(line, err=True), serial_if=serial_if, info=info,
                           run_cells=run_cells)
    click.echo(result.format_table())
    for path in write_outputs(result, prefix, plot):
        click.echo(f"wrote {path}")


@main.command("view")
@click.argument("model_path", metavar="FILE.onnx", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on (keep it local).")
@click.option("--port", type=click.IntRange(0, 65535), help="Port (default: 8080 or a free one; 0: any free port).")
@click.option("--browse/--no-browse", default=True, show_default=True, help="Open the page in a web browser.")
@_user_errors
def view_command(model_path: Path, host: str, port: int | None, browse: bool):
    """Show FILE.onnx (an ANN or a compiled SNN) in Netron on localhost."""
    from snncc.view import serve, wait

    url = serve(model_path, host, port, browse)
    click.echo(f"serving {model_path} in Netron at {url} (Ctrl-C to stop)")
    sys.stdout.flush()
    wait()


if __name__ == "__main__":
    main()
