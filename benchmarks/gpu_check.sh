#!/usr/bin/env bash
# One-shot GPU check, one table: the CUDA test subset, parity of our SAM 2 with upstream sam2==1.1.0
# (2.1-T and 2.1-L at 1024 px, fp32 and bf16), fps and peak VRAM of SAM 2 (ours, upstream) and SAM2Long
# P = 1, 3 (2.1-L, 1024 px, 1 and 3 objects), and SAM2Long's peak VRAM at 500 vs 2,000 frames.
#
#   bash benchmarks/gpu_check.sh                          # CUDA: < 8 min on one H200
#   bash benchmarks/gpu_check.sh --device cpu --quick     # CPU smoke run (tiny model, 256 px): ~2 min
#
# Options go to benchmarks/gpu_check.py (--out DIR, default ./gpu_check_out; --sections; --upstream_src).
# Needs only the package index: installs this package with its dev extras if `sam2long` is not
# importable, and fetches the upstream sdist with pip (or set SAM2_UPSTREAM_SRC to an extracted one).
# Writes only to a temp folder and DIR (gpu_check.md, gpu_check.json); every section has a time
# budget, and the whole run is stopped after GPU_CHECK_TIMEOUT seconds (default 470; 1800 with
# --quick), printing the rows finished by then.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
PYTHON=${PYTHON:-python}
export PYTHONDONTWRITEBYTECODE=1

out=gpu_check_out
limit=470 # s: the full check must end within 8 minutes
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --out) out=${args[i + 1]:-$out} ;;
        --out=*) out=${args[i]#--out=} ;;
        --quick) limit=1800 ;; # CPU smoke runs: only a guard against hangs on a loaded machine
    esac
done
limit=${GPU_CHECK_TIMEOUT:-$limit}

if ! "$PYTHON" -c "import sam2long, pytest" >/dev/null 2>&1; then
    echo "[gpu_check] installing the package: $PYTHON -m pip install -e .[dev]" >&2
    start=$SECONDS
    if ! "$PYTHON" -m pip install -q -e ".[dev]" >&2; then
        echo "[gpu_check] pip install failed" >&2
        exit 2
    fi
    echo "[gpu_check] installed in $((SECONDS - start)) s (not counted in the check's time)" >&2
fi

export GPU_CHECK_COMMAND="bash benchmarks/gpu_check.sh $*"
timeout -k 15 "$limit" "$PYTHON" benchmarks/gpu_check.py --out "$out" "$@"
rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "[gpu_check] stopped after $limit s; rows finished so far:" >&2
    if [ -f "$out/gpu_check.md" ]; then cat "$out/gpu_check.md"; fi
fi
exit "$rc"
