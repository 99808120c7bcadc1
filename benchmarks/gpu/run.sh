#!/usr/bin/env bash
# The GPU check of the native library, for a machine with an NVIDIA GPU, nvcc, cmake and no
# internet. Needs the ONNX Runtime headers cached in runtime/build/ort (copy that folder along from
# a machine where `make native` ran) or ORT_INCLUDE_DIR.
#
#   benchmarks/gpu/run.sh OUTDIR
#
# Writes into OUTDIR:
#   build.log      building runtime/build/libsnncc_ops.so with its CUDA kernels
#   harness.json   CUDA kernels vs CPU kernels (ParallelSpike, also with constant_input, and SerialIF; must be bit-identical),
#                  float32 and float16, and their times against a device-to-device copy
#   ort_cuda.log   tests/test_native*.py on ONNX Runtime's CUDA execution provider (only when the
#                  installed onnxruntime offers it, i.e. onnxruntime-gpu)
#   torch.json     PyTorch's dense equivalent, timed (only when torch sees a GPU)
# Environment: PYTHON (default python3), HARNESS_ARGS (e.g. "--neurons 1048576 --steps 4 16").
set -euo pipefail

out="${1:?usage: benchmarks/gpu/run.sh OUTDIR}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${PYTHON:-python3}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$repo"
status=0

echo "== build" >&2
PYTHON="$python" bash runtime/build.sh >"$out/build.log" 2>&1 || { tail -n 30 "$out/build.log" >&2; exit 1; }

echo "== harness" >&2
nvcc -std=c++17 -O3 --fmad=false -Xcompiler -O3,-ffp-contract=off -arch=native -I runtime/src -DSNNCC_CPU_VARIANT=baseline \
  benchmarks/gpu/harness.cu runtime/src/cuda_kernel.cu runtime/src/serial_if_cuda.cu runtime/src/cpu_kernel.cc \
  runtime/src/serial_if_cpu.cc -o "$out/harness.bin" >&2
# shellcheck disable=SC2086  # HARNESS_ARGS is a list of words
"$out/harness.bin" ${HARNESS_ARGS:-} >"$out/harness.json" || status=1
rm -f "$out/harness.bin"

if "$python" -c 'import onnxruntime, sys; sys.exit("CUDAExecutionProvider" not in onnxruntime.get_available_providers())' 2>/dev/null; then
  echo "== ONNX Runtime CUDA execution provider" >&2
  PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}" "$python" -m pytest -q -rs tests/test_native.py tests/test_native_serial_if.py tests/test_native_spike_count.py >"$out/ort_cuda.log" 2>&1 || status=1
  tail -n 3 "$out/ort_cuda.log" >&2
else
  echo "== ONNX Runtime has no CUDA execution provider here (install onnxruntime-gpu): skipped" >&2
fi

if "$python" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  echo "== PyTorch dense equivalent" >&2
  "$python" benchmarks/gpu/torch_dense.py >"$out/torch.json" || status=1
else
  echo "== torch with CUDA not available: skipped" >&2
fi
exit "$status"
