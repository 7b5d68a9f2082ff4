#!/usr/bin/env bash
# Download the official SAM 2.1 and SAM 2 checkpoints into this folder.
# Usage: cd checkpoints && ./download_ckpts.sh        (needs curl or wget and network access)
# Set SAM2_BASE_URL to use a mirror. Any failed download stops the script with a non-zero exit.
set -euo pipefail

cd "$(dirname "$0")"

if command -v wget >/dev/null 2>&1; then
    fetch() { wget --tries=3 -O "$2.part" "$1" && mv "$2.part" "$2"; }
elif command -v curl >/dev/null 2>&1; then
    fetch() { curl --fail --location --retry 3 -o "$2.part" "$1" && mv "$2.part" "$2"; }
else
    echo "error: neither wget nor curl is installed; install one and re-run." >&2
    exit 1
fi

BASE_URL="${SAM2_BASE_URL:-https://dl.fbaipublicfiles.com/segment_anything_2}"
SAM2p1_URL="${BASE_URL}/092824"
SAM2_URL="${BASE_URL}/072824"

download() {
    local url="$1" name="$2"
    if [ -s "$name" ]; then
        echo "$name already present, skipping"
        return
    fi
    echo "Downloading $name from $url"
    if ! fetch "$url" "$name"; then
        rm -f "$name.part"
        echo "error: failed to download $name from $url" >&2
        exit 1
    fi
}

for name in sam2.1_hiera_tiny.pt sam2.1_hiera_small.pt sam2.1_hiera_base_plus.pt sam2.1_hiera_large.pt; do
    download "${SAM2p1_URL}/${name}" "$name"
done
for name in sam2_hiera_tiny.pt sam2_hiera_small.pt sam2_hiera_base_plus.pt sam2_hiera_large.pt; do
    download "${SAM2_URL}/${name}" "$name"
done
echo "All checkpoints downloaded."
