#!/usr/bin/env bash
# Everything the GPU issue needs from a lent GPU, prepared so that the next session with a GPU runs this
# instead of writing it. The device tool allows 10 minutes per command and 15 minutes of device time per
# session, start-up (a minute or two) and idle time included, and keeps a machine warm for 30 s after a
# call, build outputs included. So about 11 minutes of commands in all, as two back-to-back calls whose
# stage limits add up to less than their timeout:
#
#     run(command="bash benchmarks/gpu_session.sh build sanitize tests", timeout_s=480)   # limits: 440 s
#     run(command="bash benchmarks/gpu_session.sh bench", timeout_s=260)                  # at once; 240 s
#
# (no arguments: every stage, in one call). Stages, logged under $OUT (build.log, tests.log, sanitizer.log
# and the benchmark's four files: what comes back is at most 8 files), each with its own time limit so one
# stuck stage cannot eat the others' time:
#   build     pip install --no-build-isolation --no-deps -e . with the CUDA sources (SPARSEKERN_CUDA_ARCHS,
#             default 90 here: the lent GPUs are H100/H200), then which kernels serve CUDA tensors
#   sanitize  compute-sanitizer memcheck and racecheck over tests/cuda/sanitize_smoke.py (first: an illegal
#             access poisons the CUDA context of a whole pytest run, the smoke script pins it to one call)
#   tests     the CUDA C++ kernel tests, then the Triton tests compiled for the GPU (TRITON_INTERPRET=0)
#   bench     python -m benchmarks.gpu_linear: bfloat16 on the issue's targets first (64, 32, 16, 128-blocks,
#             then unstructured), float32 on a few cases; each case is written out as soon as it is timed
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
[ "${#stages[@]}" -gt 0 ] || stages=(build sanitize tests bench)
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
    if ! run_stage build 180 build.log "$PY" -m pip install --no-build-isolation --no-deps -v -e .; then
        echo "build failed: see build.log"
        exit 1
    fi
    if ! registered; then  # setup.py builds CPU-only without CUDA_HOME or a CUDA torch: say so, stop
        echo "build finished without CUDA kernels (torch.version.cuda, CUDA_HOME?): see build.log"
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

# Without the caching allocator every tensor is its own allocation, so memcheck sees an overrun of a small
# one; one fixed Triton config keeps autotuning's compile-and-time sweep out of the instrumented run.
if ! wants sanitize; then
    :
elif command -v compute-sanitizer >/dev/null 2>&1 && [ -f tests/cuda/sanitize_smoke.py ]; then
    export_san=(env PYTORCH_NO_CUDA_MEMORY_CACHING=1 SPARSEKERN_TRITON_AUTOTUNE=0)
    run_stage memcheck 50 sanitizer.log "${export_san[@]}" compute-sanitizer --tool memcheck --error-exitcode 1 \
        "$PY" tests/cuda/sanitize_smoke.py
    run_stage racecheck 50 sanitizer.log "${export_san[@]}" compute-sanitizer --tool racecheck --error-exitcode 1 \
        "$PY" tests/cuda/sanitize_smoke.py
else
    stage "sanitizer skipped (compute-sanitizer or tests/cuda/sanitize_smoke.py missing)"
fi

if wants tests; then
    [ -f tests/test_cuda_kernels.py ] && run_stage "CUDA C++ tests" 60 tests.log "$PY" -m pytest -q -p no:cacheprovider \
        --durations=10 tests/test_cuda_kernels.py
    triton_tests=()
    for t in tests/test_triton_bsr.py tests/test_triton_dispatch.py; do [ -f "$t" ] && triton_tests+=("$t"); done
    run_stage "Triton tests" 100 tests.log "$PY" -m pytest -q -p no:cacheprovider --durations=10 "${triton_tests[@]}"
fi

wants bench && run_stage "benchmark bfloat16" 170 - "$PY" -m benchmarks.gpu_linear --dtypes bfloat16 \
    --layouts 64,32,16,128,csr --sparsities 0.4,0.7,0.85,0.9,0.95,0.99 --repeats 10 --out "$OUT" --name linear_gpu_bf16
wants bench && run_stage "benchmark float32" 70 - "$PY" -m benchmarks.gpu_linear --dtypes float32 --layouts 32,csr \
    --sparsities 0.9,0.99 --repeats 5 --no-compile --out "$OUT" --name linear_gpu_fp32

stage "done"
if [ "${#failed[@]}" -ne 0 ]; then
    printf 'FAILED: %s\n' "${failed[@]}"
    exit 1
fi
echo "all stages passed"
