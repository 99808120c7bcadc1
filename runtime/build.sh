#!/usr/bin/env bash
# Builds runtime/build/libsnncc_ops.so (CPU kernels, plus CUDA kernels when nvcc is found) and,
# when the onnxruntime Python wheel is found, the C++ example runtime/build/examples/snn_classify.
# Idempotent; `make native` runs it.
#
# ONNX Runtime's C/C++ headers: $ORT_INCLUDE_DIR if set, else Debian trixie's libonnxruntime-dev,
# downloaded once into runtime/build/ort/ with private apt state (the system's is not touched) and
# reused from there afterwards (copy that folder along to build on a machine without internet).
#
# Environment: ORT_INCLUDE_DIR, SNNCC_CUDA=0 (skip the CUDA kernels), SNNCC_CUDA_ARCHITECTURES (the
# GPU code to build, e.g. "native" for this machine's GPU or "90-real"; default: CMakeLists.txt's
# list, sm_75 to sm_120), PYTHON (interpreter whose
# onnxruntime wheel the example links; default .venv/bin/python, else python3),
# SNNCC_DEBIAN_MIRROR (default: the Debian mirror of this machine's apt sources).
set -euo pipefail

runtime_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="$(dirname "$runtime_dir")"
build_dir="$runtime_dir/build"
ort_dir="$build_dir/ort"
deb_package=libonnxruntime-dev

log() { echo "runtime/build.sh: $*" >&2; }

# The Debian mirror that this machine's apt sources use, for the one-line trixie source.
debian_mirror() {
  if [[ -n "${SNNCC_DEBIAN_MIRROR:-}" ]]; then
    echo "$SNNCC_DEBIAN_MIRROR"
    return
  fi
  local url
  url=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -v '^\s*#' | grep -oE 'https?://[^ ]+/debian/?( |$)' | head -n1 | tr -d ' ' || true)
  echo "${url:-http://deb.debian.org/debian}"
}

# Downloads the libonnxruntime-dev .deb into $ort_dir with private apt lists and cache.
# A subshell, so that the EXIT trap removes the temporary folder whatever happens.
download_headers_deb() (
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  mirror=$(debian_mirror)
  log "downloading $deb_package from $mirror (trixie main)"
  echo "deb ${mirror%/} trixie main" >"$tmp/sources.list"
  mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/deb"
  apt_options=(-q -o "Dir::Etc::SourceList=$tmp/sources.list" -o Dir::Etc::SourceParts=-
    -o "Dir::State::Lists=$tmp/lists" -o "Dir::Cache=$tmp/cache")
  # As root, apt drops to the _apt user for downloads, which cannot write into our private folder.
  [[ $EUID -eq 0 ]] && apt_options+=(-o APT::Sandbox::User=root)
  apt-get "${apt_options[@]}" update >&2
  (cd "$tmp/deb" && apt-get "${apt_options[@]}" download "$deb_package" >&2)
  mkdir -p "$ort_dir"
  mv "$tmp"/deb/"$deb_package"_*.deb "$ort_dir/"
)

# Prints the header folder, fetching and unpacking the .deb when no cached copy exists.
ort_include_dir() {
  if [[ -n "${ORT_INCLUDE_DIR:-}" ]]; then
    echo "$ORT_INCLUDE_DIR"
    return
  fi
  local include="$ort_dir/usr/include/onnxruntime"
  if [[ ! -f "$include/onnxruntime_cxx_api.h" ]]; then
    compgen -G "$ort_dir/${deb_package}_*.deb" >/dev/null || download_headers_deb
    local deb
    deb=$(compgen -G "$ort_dir/${deb_package}_*.deb" | sort | tail -n1)
    log "unpacking $(basename "$deb")"
    dpkg-deb -x "$deb" "$ort_dir"
  fi
  echo "$include"
}

# The libonnxruntime.so.1.* inside the onnxruntime wheel, or nothing.
wheel_library() {
  local python="${PYTHON:-}"
  if [[ -z "$python" ]]; then
    python="$repo_dir/.venv/bin/python"
    [[ -x "$python" ]] || python=python3
  fi
  "$python" - <<'PY' 2>/dev/null || true
import glob, os, onnxruntime
found = sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so.1*")))
print(found[-1] if found else "")
PY
}

main() {
  local include cuda_args=() jobs
  include=$(ort_include_dir)
  jobs=$(nproc 2>/dev/null || echo 2)
  if [[ "${SNNCC_CUDA:-1}" == 0 ]]; then
    log "SNNCC_CUDA=0: building the CPU kernels only"
    cuda_args=(-DSNNCC_WITH_CUDA=OFF)
  elif command -v nvcc >/dev/null; then
    cuda_args=(-DSNNCC_WITH_CUDA=ON "-DCMAKE_CUDA_COMPILER=$(command -v nvcc)")
    if [[ -n "${SNNCC_CUDA_ARCHITECTURES:-}" ]]; then
      cuda_args+=("-DSNNCC_CUDA_ARCHITECTURES=$SNNCC_CUDA_ARCHITECTURES")
    else
      cuda_args+=(-USNNCC_CUDA_ARCHITECTURES)  # CMakeLists.txt's default, whatever an earlier run set
    fi
  else
    log "nvcc not found: building the CPU kernels only"
    cuda_args=(-DSNNCC_WITH_CUDA=OFF)
  fi
  cmake -S "$runtime_dir" -B "$build_dir/cmake" -DCMAKE_BUILD_TYPE=Release "-DORT_INCLUDE_DIR=$include" \
    "-DSNNCC_OUTPUT_DIR=$build_dir" "${cuda_args[@]}" >&2
  cmake --build "$build_dir/cmake" -j "$jobs" >&2
  log "built $build_dir/libsnncc_ops.so"

  local library
  library=$(wheel_library)
  if [[ -z "$library" ]]; then
    log "onnxruntime wheel not found: skipping the C++ example"
    return
  fi
  cmake -S "$repo_dir/examples/cpp" -B "$build_dir/examples" -DCMAKE_BUILD_TYPE=Release \
    "-DORT_INCLUDE_DIR=$include" "-DORT_LIBRARY=$library" >&2
  cmake --build "$build_dir/examples" -j "$jobs" >&2
  log "built $build_dir/examples/snn_classify"
}

main "$@"
