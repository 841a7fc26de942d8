#!/usr/bin/env bash
# One prepared command for a machine with a CUDA GPU (under 8 minutes):
#   1. every CUDA test (pytest -k cuda: the tests named or marked cuda),
#   2. python -m trilib.bench --device cuda where the parallel solvers should win: deep MLPs
#      (k = 256..8192 at n = 8..64, batch 8) -> <out>/cuda-<gpu>-deep.json, and the default MLP
#      sweeps with RNNs of tau = 1024..16384 -> <out>/cuda-<gpu>.json (each with .csv and the
#      printed report .txt), direct solves also replayed from CUDA graphs; the notebook-11
#      transformer when the bench has a "models" suite,
#   3. python -m trilib.figures for the CUDA figures,
# and a short summary, <out>/cuda-<gpu>-check.txt.
#
# It needs only python3 with PyTorch (trilib needs torch >= 2.4), run from a copy of the
# repository with nothing installed (PYTHONPATH=.); whatever else is missing (pytest, NumPy,
# Matplotlib, JAX, transformers) is skipped with a message.
#
# usage: scripts/gpu_check.sh [--device cuda|cpu] [--out DIR] [--figures DIR]
#   --device cpu  the dry mode: tiny sizes, < 1 minute, the same kinds of files (no CUDA graphs,
#                 the CUDA tests only collected); CI runs it (tests/test_gpu_check.py)
#   --out DIR     where the results go (default: benchmarks/results for cuda, a new temporary
#                 folder for cpu, so a dry run never touches benchmarks/)
#   --figures DIR where the figures go (default: figures for cuda, the --out folder for cpu)
# environment: PYTHON (default python3), GPU_CHECK_BUDGET_S (default 450: the steps share it).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
DEVICE=cuda
OUT=""
FIGURES=""
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE=${2:-}; shift 2 ;;
        --out) OUT=${2:-}; shift 2 ;;
        --figures) FIGURES=${2:-}; shift 2 ;;
        -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case "$DEVICE" in
    cuda) OUT=${OUT:-benchmarks/results}; FIGURES=${FIGURES:-figures} ;;
    cpu) OUT=${OUT:-$(mktemp -d -t trilib-gpu-check-XXXXXX)}; FIGURES=${FIGURES:-$OUT} ;;
    *) echo "gpu_check: --device must be cuda or cpu, got '$DEVICE'" >&2; exit 2 ;;
esac
mkdir -p "$OUT" "$FIGURES"
DEADLINE=$((SECONDS + ${GPU_CHECK_BUDGET_S:-450}))
STATUS=0
LOG=()
say() { echo "gpu_check: $*"; LOG+=("$*"); }
left() { local s=$((DEADLINE - SECONDS)); echo $((s > 10 ? s : 10)); }
# run NAME CAP COMMAND...: at most CAP seconds and never past the budget; failures are recorded
run() {
    local name=$1 cap=$2 rc t0=$SECONDS limit
    shift 2
    limit=$(left)
    limit=$((limit < cap ? limit : cap))
    echo "gpu_check: -- $name (at most ${limit} s): $*"
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    if [ $rc = 0 ]; then
        say "$name: ok ($((SECONDS - t0)) s)"
    elif [ $rc = 124 ] || [ $rc = 137 ]; then
        say "$name: STOPPED after ${limit} s (time budget)"; STATUS=1
    else
        say "$name: FAILED (exit $rc, $((SECONDS - t0)) s)"; STATUS=1
    fi
}

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "gpu_check: $PY cannot import torch: nothing to check (trilib needs torch >= 2.4)" >&2
    exit 1
fi
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check: torch sees no CUDA GPU here; --device cpu runs the dry mode" >&2
    exit 1
fi
# one probe: the result files' stem (device and its name), torch's version, what is missing
PROBE=$("$PY" -c "
import importlib.util, sys
import torch
from trilib.bench.__main__ import _slug
from trilib.bench.timing import device_name
print(f'{sys.argv[1]}-{_slug(device_name(sys.argv[1]))}', torch.__version__)
print(*[m for m in ('pytest', 'hypothesis', 'numpy', 'matplotlib', 'jax', 'transformers',
                   'trilib.bench.models') if importlib.util.find_spec(m) is None])
" "$DEVICE") || { echo "gpu_check: trilib does not import" >&2; exit 1; }
read -r STEM TORCH <<< "$(head -n 1 <<< "$PROBE")"
MISSING=" $(tail -n +2 <<< "$PROBE") "
has() { [[ "$MISSING" != *" $1 "* ]]; }
say "$STEM: torch $TORCH, results in $OUT, figures in $FIGURES"
for module in $MISSING; do
    [ "$module" = trilib.bench.models ] || say "missing: $module (what needs it is skipped)"
done

# 1. the CUDA tests -----------------------------------------------------------------------------
if ! has pytest; then
    say "tests: SKIPPED (no pytest)"
else
    # only the test files that speak of CUDA: the others may need what is missing here
    mapfile -t CUDA_FILES < <(grep -l -i cuda tests/test_*.py)
    if [ "$DEVICE" = cuda ]; then
        run "cuda tests" 150 "$PY" -m pytest -q -p no:cacheprovider -k cuda -m "not browser" "${CUDA_FILES[@]}"
    else
        run "cuda tests (collected only: dry mode)" 60 "$PY" -m pytest -q -p no:cacheprovider \
            --collect-only -k cuda tests/test_bench.py
    fi
fi

# 2. the benchmark -------------------------------------------------------------------------------
DIRECT=sequential,recursive_doubling,blelloch,cyclic_reduction,parallel_cyclic_reduction
PEERS=associative_scan,jax.associative_scan,jax.scan
if [ "$DEVICE" = cuda ]; then
    DEEP=(--k 256,1024,4096,8192 --n 8,16,32,64 --batch 8)
    DEFAULT=(--tau 1024,4096,16384 --fixed-batch 8)
    COMMON=(--device cuda --cuda-graphs --repeats 3 --warmup 1)
else
    DEEP=(--k 4,8 --n 4,6 --batch 2)
    DEFAULT=(--k 4,8 --n 4 --batch 2 --tau 8,16)
    COMMON=(--device cpu --repeats 1 --warmup 0 --no-step)
fi
FIG=(--figures "$FIGURES")
has matplotlib || FIG=(--figures "")
if ! has numpy; then
    say "bench: SKIPPED (no numpy)"
else
    run "bench, deep MLPs" 240 "$PY" -m trilib.bench --suite mlp "${DEEP[@]}" --methods "$DIRECT,$PEERS" \
        --tag deep --text --out "$OUT" "${FIG[@]}" "${COMMON[@]}"
    run "bench, default sizes and RNNs" 150 "$PY" -m trilib.bench --suite mlp,rnn "${DEFAULT[@]}" \
        --methods "$DIRECT,$PEERS,wavefront,nested" --text --out "$OUT" "${FIG[@]}" "${COMMON[@]}"
    if ! has trilib.bench.models; then
        say "bench, notebook-11 transformer: SKIPPED (no 'models' suite, trilib/bench/models.py, yet)"
    elif ! has transformers; then
        say "bench, notebook-11 transformer: SKIPPED (no transformers)"
    else
        run "bench, notebook-11 transformer" 90 "$PY" -m trilib.bench --suite models --tag models --text \
            --out "$OUT" "${FIG[@]}" "${COMMON[@]}"
    fi
fi

# 3. the figures ---------------------------------------------------------------------------------
if ! has matplotlib; then
    say "figures: SKIPPED (no matplotlib)"
elif [ "$DEVICE" = cuda ] && [ "$OUT" -ef benchmarks/results ]; then
    run "figures" 60 "$PY" -m trilib.figures bench_cuda bench_cuda_deep --out "$FIGURES"
else
    say "figures: drawn by the bench into $FIGURES (python -m trilib.figures reads benchmarks/results only)"
fi

# summary -----------------------------------------------------------------------------------------
SUMMARY="$OUT/$STEM-check.txt"
{
    echo "scripts/gpu_check.sh --device $DEVICE on $STEM, $(date -u +%Y-%m-%dT%H:%M:%SZ), ${SECONDS} s"
    printf '%s\n' "${LOG[@]}"
    for report in "$OUT/$STEM"*.txt; do
        [ "$report" = "$SUMMARY" ] || [ ! -f "$report" ] && continue
        echo "== $(basename "$report")"
        grep -E "best direct solve|^crossover|^note:" "$report"
    done
} > "$SUMMARY"
cat "$SUMMARY"
echo "gpu_check: wrote $SUMMARY"
exit $STATUS
