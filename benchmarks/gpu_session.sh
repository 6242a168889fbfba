#!/usr/bin/env bash
# Everything the GPU issue needs from a lent GPU, in one call of the device tool (its device time is short:
# 15 minutes per session, start-up included), so the next session with a GPU runs this instead of writing it:
#
#     run(command="bash benchmarks/gpu_session.sh", timeout_s=590)
#
# Stages, logged under $OUT (build.log, tests.log, sanitizer.log and the benchmark's four files: what comes back
# is at most 8 files), each with its own time limit so one
# stuck stage cannot eat the others' time:
#   1. build     pip install --no-build-isolation --no-deps -e . with the CUDA sources (SPARSEKERN_CUDA_ARCHS,
#                default 90 here: the lent GPUs are H100/H200), then which kernels serve CUDA tensors
#   2. tests     the CUDA C++ kernel tests and the Triton tests compiled for the GPU (TRITON_INTERPRET=0)
#   3. sanitize  compute-sanitizer memcheck and racecheck over tests/cuda/sanitize_smoke.py, when both exist
#   4. bench     python -m benchmarks.gpu_linear: bfloat16 on the issue's whole grid, float32 on a few sparsities
# Stages after a failed build are skipped; a failed test or sanitizer run does not stop the benchmark (its own
# checks refuse to time a wrong candidate). Exit status: non-zero if any stage failed.
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

stage "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader || true
"$PY" -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)'

if ! run_stage build 240 build.log "$PY" -m pip install --no-build-isolation --no-deps -v -e .; then
    echo "build failed: see build.log"
    exit 1
fi
"$PY" - <<'EOF' 2>&1 | tee -a "$OUT/build.log"
import torch
import sparsekern
from sparsekern import _extension
print("extension loaded:", sparsekern.extension_available, _extension.LOAD_ERROR or "")
for op in ("csr_spmm", "csr_spmm_bt", "csr_sddmm", "csr_spmm_sddmm_bt", "bsr_spmm", "bsr_spmm_bt", "bsr_sddmm"):
    print(f"  {op:20s} CUDA kernel registered: {torch._C._dispatch_has_kernel_for_dispatch_key('sparsekern::' + op, 'CUDA')}")
EOF

gpu_tests=(tests/test_cuda_kernels.py tests/test_triton_bsr.py tests/test_triton_dispatch.py)
present=()
for t in "${gpu_tests[@]}"; do [ -f "$t" ] && present+=("$t"); done
run_stage tests 150 tests.log "$PY" -m pytest -q -p no:cacheprovider "${present[@]}"

if command -v compute-sanitizer >/dev/null 2>&1 && [ -f tests/cuda/sanitize_smoke.py ]; then
    run_stage memcheck 60 sanitizer.log compute-sanitizer --tool memcheck --error-exitcode 1 "$PY" tests/cuda/sanitize_smoke.py
    run_stage racecheck 60 sanitizer.log compute-sanitizer --tool racecheck --error-exitcode 1 "$PY" tests/cuda/sanitize_smoke.py
else
    stage "sanitizer skipped (compute-sanitizer or tests/cuda/sanitize_smoke.py missing)"
fi

run_stage "benchmark bfloat16" 200 - "$PY" -m benchmarks.gpu_linear --dtypes bfloat16 --out "$OUT" --name linear_gpu_bf16
run_stage "benchmark float32" 90 - "$PY" -m benchmarks.gpu_linear --dtypes float32 --sparsities 0.5,0.9,0.99 \
    --layouts csr,32,128 --repeats 10 --no-compile --out "$OUT" --name linear_gpu_fp32

stage "done"
if [ "${#failed[@]}" -ne 0 ]; then
    printf 'FAILED: %s\n' "${failed[@]}"
    exit 1
fi
echo "all stages passed"
