#!/usr/bin/env bash
# The GPU check of the native library, in one command that ends within 10 minutes (every step runs
# under what is left of a 570-second budget; a step that would exceed it is stopped and recorded
# as failed, the ones after it as skipped): builds it with its CUDA kernels, checks them against the CPU kernels, runs the CUDA tests on
# ONNX Runtime's CUDA execution provider, times everything, and writes a summary. For a machine
# with an NVIDIA GPU, nvcc, cmake and no internet: the ONNX Runtime headers come from
# runtime/build/ort (copy that folder along from a machine where `make native` ran) or ORT_INCLUDE_DIR.
#
#   benchmarks/gpu/run.sh OUTDIR        # or: make gpu-check OUT=OUTDIR
#
# Writes into OUTDIR:
#   summary.json, summary.md  every step's status and figures (what follows, condensed)
#   build.log      runtime/build.sh: libsnncc_ops.so with its CUDA kernels (for this GPU only where one
#                  is found: SNNCC_CUDA_ARCHITECTURES=native, faster than the default list)
#   harness.json   CUDA kernels vs CPU kernels (ParallelSpike, also with constant_input, and SerialIF;
#                  must be bit-identical), float32 and float16, timed against a device-to-device copy
#   ort_cuda.log   the CUDA tests of tests/test_native*.py on ONNX Runtime's CUDA execution provider
#   ort_cuda.json  the compiled Fashion-MNIST VGG on that provider: which provider ran each snn node
#                  (ONNX Runtime's profile), outputs and time per batch vs the CPU provider
#   torch.json     PyTorch's dense equivalent of the neuron, timed
# The ONNX Runtime steps need onnxruntime-gpu in PYTHON's environment, the last one torch with CUDA;
# each is skipped, saying so, where that is missing.
#
# Exit status: 0 when a GPU was found and every step that ran passed; 1 when a step failed;
# 2 when no GPU was found (the library and the harness are still built, so the CUDA code is
# checked to compile, but nothing runs on a GPU).
# Environment: PYTHON (default python3), HARNESS_ARGS (e.g. "--neurons 1048576 --steps 4 16").
set -euo pipefail

out="${1:?usage: benchmarks/gpu/run.sh OUTDIR}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${PYTHON:-python3}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$repo"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
steps_file="$out/steps.tsv"  # step <TAB> status <TAB> seconds <TAB> note
: >"$steps_file"

say() { echo "benchmarks/gpu/run.sh: $*" >&2; }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$steps_file"; say "$1: $2${4:+ ($4)}"; }
deadline=$((SECONDS + 570))
# Runs step $1 (a command, stdout to $2) within what is left of the budget, recording passed,
# failed (124: out of time) or skipped (no time left) and its time.
step() {
  local name=$1 stdout=$2 start=$SECONDS left=$((deadline - SECONDS))
  shift 2
  if ((left <= 0)); then
    record "$name" skipped 0 "the 570 s budget was spent"
  elif timeout --kill-after=10 "$left" "$@" >"$stdout" 2>>"$out/$name.stderr"; then
    record "$name" passed $((SECONDS - start)) ""
  else
    record "$name" failed $((SECONDS - start)) "exit $?; see $(basename "$out")/$name.stderr"
  fi
}

gpu=""
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -n1)
  say "GPU: $gpu"
else
  say "no NVIDIA GPU found (nvidia-smi -L failed): building only; nothing will run on a GPU"
fi
command -v nvcc >/dev/null || { say "nvcc not found: the CUDA kernels cannot be built"; exit 1; }

architectures=${SNNCC_CUDA_ARCHITECTURES:-$([[ -n "$gpu" ]] && echo native || echo "")}
step build /dev/null env PYTHON="$python" SNNCC_CUDA_ARCHITECTURES="$architectures" \
  bash -c 'bash runtime/build.sh >"$0" 2>&1' "$out/build.log"

harness_arch=$([[ -n "$gpu" ]] && echo native || echo sm_90)
step harness_build /dev/null nvcc -std=c++17 -O3 --fmad=false -Xcompiler -O3,-ffp-contract=off "-arch=$harness_arch" \
  -I runtime/src -DSNNCC_CPU_VARIANT=baseline benchmarks/gpu/harness.cu runtime/src/cuda_kernel.cu \
  runtime/src/serial_if_cuda.cu runtime/src/cpu_kernel.cc runtime/src/serial_if_cpu.cc -o "$out/harness.bin"

if [[ -z "$gpu" ]]; then
  for name in harness ort_cuda_tests ort_cuda_models torch; do record "$name" skipped 0 "no GPU"; done
else
  # shellcheck disable=SC2086  # HARNESS_ARGS is a list of words
  step harness "$out/harness.json" "$out/harness.bin" ${HARNESS_ARGS:-}
  if "$python" -c 'import onnxruntime, sys; sys.exit("CUDAExecutionProvider" not in onnxruntime.get_available_providers())' 2>/dev/null; then
    step ort_cuda_tests "$out/ort_cuda.log" "$python" -m pytest -q -rs -p no:cacheprovider -k cuda \
      tests/test_native.py tests/test_native_serial_if.py tests/test_native_spike_count.py
    step ort_cuda_models "$out/ort_cuda.json" "$python" benchmarks/gpu/ort_cuda_check.py
  else
    for name in ort_cuda_tests ort_cuda_models; do
      record "$name" skipped 0 "$python's onnxruntime has no CUDAExecutionProvider: pip install 'snncc[gpu]'"
    done
  fi
  if "$python" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    step torch "$out/torch.json" "$python" benchmarks/gpu/torch_dense.py
  else
    record torch skipped 0 "torch with CUDA not available"
  fi
fi
rm -f "$out/harness.bin"
find "$out" -name '*.stderr' -empty -delete

"$python" benchmarks/gpu/summary.py "$out" "$gpu"
if grep -q $'\tfailed\t' "$steps_file"; then exit 1; fi
[[ -n "$gpu" ]] || exit 2
