#!/usr/bin/env bash
# Everything the GPU issue needs from a lent GPU, prepared so that the next session with a GPU runs this
# instead of writing it. The device tool allows 10 minutes per command and 15 minutes of device time per
# session (start-up included), and keeps a machine warm for 30 s after a call, build outputs included; so
# two back-to-back calls:
#
#     run(command="bash benchmarks/gpu_session.sh build tests sanitize", timeout_s=590)
#     run(command="bash benchmarks/gpu_session.sh bench", timeout_s=590)      # at once, while still warm
#
# (no arguments: every stage, in one call). Stages, logged under $OUT (build.log, tests.log, sanitizer.log
# and the benchmark's four files: what comes back is at most 8 files), each with its own time limit so one
# stuck stage cannot eat the others' time:
#   build     pip install --no-build-isolation --no-deps -e . with the CUDA sources (SPARSEKERN_CUDA_ARCHS,
#             default 90 here: the lent GPUs are H100/H200), then which kernels serve CUDA tensors
#   tests     the CUDA C++ kernel tests and the Triton tests compiled for the GPU (TRITON_INTERPRET=0)
#   sanitize  compute-sanitizer memcheck and racecheck over tests/cuda/sanitize_smoke.py
#   bench     python -m benchmarks.gpu_linear: bfloat16 on the issue's grid, float32 on a few sparsities
# A stage other than build finds the package built (on a fresh machine it builds first). A failed test or
# sanitizer run does not stop the later stages (the benchmark's own checks refuse to time a wrong
# candidate). Exit status: non-zero if any stage failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/sparsekern-gpu}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
export MAX_JOBS="${MAX_JOBS:-$(nproc)}" SPARSEKERN_CUDA_ARCHS="${SPARSEKERN_CUDA_ARCHS:-90}"
PY="${PYTHON:-python3}"
failed=()
stage() { printf '\n=== [%4ds] %s\n' "$SECONDS" "$*"; }
# run_stage NAME LIMIT_S LOG COMMAND...: the command under a time limit, its output appended to $OUT/LOG
# (LOG "-": not kept, for stages that write their own files).
run_stage() {
    local name="$1" limit="$2" log="$3"
    shift 3
    stage "$name (limit ${limit}s): $*"
    local keep=/dev/null
    [ "$log" = "-" ] || keep="$OUT/$log"
    timeout "$limit" "$@" 2>&1 | tee -a "$keep" | tail -n 25
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "FAILED ($rc): $name"; failed+=("$name ($rc)"); }
    return "$rc"
}

stages=("$@")
[ "${#stages[@]}" -gt 0 ] || stages=(build tests sanitize bench)
wants() { local x; for x in "${stages[@]}"; do [ "$x" = "$1" ] && return 0; done; return 1; }
for x in "${stages[@]}"; do
    case "$x" in build|tests|sanitize|bench) ;; *) echo "gpu_session.sh: unknown stage $x" >&2; exit 2 ;; esac
done

stage "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader || true
"$PY" -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)'

registered() {  # are this checkout's CUDA kernels built and registered?
    "$PY" -c 'import sys, torch, sparsekern; sys.exit(0 if torch._C._dispatch_has_kernel_for_dispatch_key("sparsekern::csr_spmm", "CUDA") else 1)' 2>/dev/null
}
if wants build || ! registered; then
    if ! run_stage build 240 build.log "$PY" -m pip install --no-build-isolation --no-deps -v -e .; then
        echo "build failed: see build.log"
        exit 1
    fi
    "$PY" -c '
import torch, sparsekern
from sparsekern import _extension
print("extension loaded:", sparsekern.extension_available, _extension.LOAD_ERROR or "")
for op in ("csr_spmm", "csr_spmm_bt", "csr_sddmm", "csr_spmm_sddmm_bt", "bsr_spmm", "bsr_spmm_bt", "bsr_sddmm"):
    print(f"  {op:20s} CUDA kernel registered:", torch._C._dispatch_has_kernel_for_dispatch_key("sparsekern::" + op, "CUDA"))
' 2>&1 | tee -a "$OUT/build.log"
fi

gpu_tests=(tests/test_cuda_kernels.py tests/test_triton_bsr.py tests/test_triton_dispatch.py)
present=()
for t in "${gpu_tests[@]}"; do [ -f "$t" ] && present+=("$t"); done
wants tests && run_stage tests 300 tests.log "$PY" -m pytest -q -p no:cacheprovider "${present[@]}"

if ! wants sanitize; then
    :
elif command -v compute-sanitizer >/dev/null 2>&1 && [ -f tests/cuda/sanitize_smoke.py ]; then
    run_stage memcheck 60 sanitizer.log compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" tests/cuda/sanitize_smoke.py
    run_stage racecheck 60 sanitizer.log compute-sanitizer --tool racecheck --error-exitcode 1 "$PY" tests/cuda/sanitize_smoke.py
else
    stage "sanitizer skipped (compute-sanitizer or tests/cuda/sanitize_smoke.py missing)"
fi

wants bench && run_stage "benchmark bfloat16" 330 - "$PY" -m benchmarks.gpu_linear --dtypes bfloat16 --out "$OUT" --name linear_gpu_bf16
wants bench && run_stage "benchmark float32" 150 - "$PY" -m benchmarks.gpu_linear --dtypes float32 --sparsities 0.5,0.9,0.99 \
    --layouts csr,32,128 --repeats 10 --no-compile --out "$OUT" --name linear_gpu_fp32

stage "done"
if [ "${#failed[@]}" -ne 0 ]; then
    printf 'FAILED: %s\n' "${failed[@]}"
    exit 1
fi
echo "all stages passed"
