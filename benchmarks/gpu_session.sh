#!/usr/bin/env bash
# Everything the GPU issue needs from a lent GPU, prepared so that the next session with a GPU runs this
# instead of writing it. The device tool allows 10 minutes per command and 15 minutes of device time per
# session, start-up (a minute or two) and idle time included, and keeps a machine warm for 30 s after a
# call, build outputs included. So two back-to-back calls, each timeout a little above the sum of its stage
# limits, about 13 minutes of device time in all with the start (2 min) and the gap between the calls:
#
#     run(command="bash benchmarks/gpu_session.sh build sanitize tests", timeout_s=410)  # limits 395 s
#     run(command="bash benchmarks/gpu_session.sh bench conv", timeout_s=245)            # at once; 230 s
#
# (no arguments: every stage, in one call: longer than one command may run). Stages, logged under $OUT
# (build.log, tests.log, sanitizer.log and the benchmarks' six files: what comes back is at most 8 files a
# call), each with its own time limit so one stuck stage cannot eat the others' time:
#   build     pip install --no-build-isolation --no-deps -e . with the CUDA sources (SPARSEKERN_CUDA_ARCHS,
#             default 90 here: the lent GPUs are H100/H200), then which kernels serve CUDA tensors (150 s)
#   sanitize  compute-sanitizer memcheck and racecheck over tests/cuda/sanitize_smoke.py (first: an illegal
#             access poisons the CUDA context of a whole pytest run, the smoke script pins it to one call)
#             (45 s each)
#   tests     the CUDA C++ kernel tests with the CSR conv lowering's (60 s), then the Triton tests of the Linear
#             and conv kernels and the block conv ops, compiled for the GPU (TRITON_INTERPRET=0; 95 s); with
#             pytest-xdist (in the GPU image) in parallel processes: the Triton tests are compile-bound, one
#             CPU core per kernel specialization, and the machine has 16
#   bench     python -m benchmarks.gpu_linear: bfloat16 on the issue's targets first (64, 32, 16, 128-blocks,
#             then unstructured; 130 s), float32 on a few cases (30 s, one fixed Triton config); each case
#             is written out as soon as it is timed, and --time-budget stops a run from starting cases it
#             may not finish: a stage that runs out of time ends with a report, not killed mid-case
#   conv      python -m benchmarks.gpu_conv, bfloat16, target-first: 32- and 64-blocks and unstructured on
#             ResNet-18's 64->64 @32x32 and 256->256 @8x8 at batch 128, then the 128->128 @16x16 and stride-2
#             64->128 layers while time remains (70 s), every candidate channels_last (the layout the Triton
#             gathers vectorise in, and cuDNN's fastest for bfloat16); one fixed Triton config per kernel
#             (SPARSEKERN_TRITON_AUTOTUNE=0, said in its report): autotuning compiles and times ~6 configs
#             of each of the three conv kernels for every new shape and block size, minutes for this grid
# A stage other than build finds the package built (on a fresh machine it builds first). A failed test or
# sanitizer run does not stop the later stages (the benchmarks' own checks refuse to time a wrong
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
[ "${#stages[@]}" -gt 0 ] || stages=(build sanitize tests bench conv)
wants() { local x; for x in "${stages[@]}"; do [ "$x" = "$1" ] && return 0; done; return 1; }
for x in "${stages[@]}"; do
    case "$x" in build|tests|sanitize|bench|conv) ;; *) echo "gpu_session.sh: unknown stage $x" >&2; exit 2 ;; esac
done

stage "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader || true
"$PY" -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)'

registered() {  # are this checkout's CUDA kernels built and registered?
    "$PY" -c 'import sys, torch, sparsekern; sys.exit(0 if torch._C._dispatch_has_kernel_for_dispatch_key("sparsekern::csr_spmm", "CUDA") else 1)' 2>/dev/null
}
if wants build || ! registered; then
    if ! run_stage build 150 build.log "$PY" -m pip install --no-build-isolation --no-deps -v -e .; then
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
for op in ("csr_spmm", "csr_spmm_bt", "csr_sddmm", "csr_spmm_sddmm_bt", "bsr_spmm", "bsr_spmm_bt", "bsr_sddmm",
           "csr_conv2d", "csr_conv2d_input_grad", "csr_conv2d_weight_grad", "bsr_conv2d", "bsr_conv2d_input_grad",
           "bsr_conv2d_weight_grad"):
    try:
        has = torch._C._dispatch_has_kernel_for_dispatch_key("sparsekern::" + op, "CUDA")
    except RuntimeError:
        has = "op not defined in this checkout"
    print(f"  {op:24s} CUDA kernel registered:", has)
for kind in ("csr", "bsr", "conv2d_csr", "conv2d_bsr"):
    print(f"  {kind:24s} layers run compiled kernels on CUDA:", _extension.has_compiled_kernels("cuda", kind))
' 2>&1 | tee -a "$OUT/build.log"
fi

# Without the caching allocator every tensor is its own allocation, so memcheck sees an overrun of a small
# one; one fixed Triton config keeps autotuning's compile-and-time sweep out of the instrumented run.
if ! wants sanitize; then
    :
elif command -v compute-sanitizer >/dev/null 2>&1 && [ -f tests/cuda/sanitize_smoke.py ]; then
    export_san=(env PYTORCH_NO_CUDA_MEMORY_CACHING=1 SPARSEKERN_TRITON_AUTOTUNE=0)
    run_stage memcheck 45 sanitizer.log "${export_san[@]}" compute-sanitizer --tool memcheck --error-exitcode 1 \
        "$PY" tests/cuda/sanitize_smoke.py
    run_stage racecheck 45 sanitizer.log "${export_san[@]}" compute-sanitizer --tool racecheck --error-exitcode 1 \
        "$PY" tests/cuda/sanitize_smoke.py
else
    stage "sanitizer skipped (compute-sanitizer or tests/cuda/sanitize_smoke.py missing)"
fi

# pytest_files NAME LIMIT_S WORKERS FILE...: the files that exist in this checkout, in one pytest run under the
# limit, spread over WORKERS processes where pytest-xdist is installed (the GPU image has it), else in one.
pytest_files() {
    local name="$1" limit="$2" workers="$3" files=() f
    shift 3
    for f in "$@"; do [ -f "$f" ] && files+=("$f"); done
    [ "${#files[@]}" -gt 0 ] || { stage "$name skipped (none of $* in this checkout)"; return 0; }
    local parallel=()
    "$PY" -c 'import xdist' 2>/dev/null && parallel=(-n "$workers")
    run_stage "$name" "$limit" tests.log "$PY" -m pytest -q -p no:cacheprovider --durations=10 \
        ${parallel[@]+"${parallel[@]}"} "${files[@]}"
}

if wants tests; then
    pytest_files "CUDA C++ tests" 60 4 tests/test_cuda_kernels.py tests/test_conv_im2col.py
    pytest_files "Triton tests" 95 8 tests/test_triton_bsr.py tests/test_triton_dispatch.py \
        tests/test_triton_bsr_conv2d.py tests/test_conv_bsr_ops.py
fi

# Each benchmark's --time-budget (counted from its main(), after ~8 s of imports) is its stage limit less those
# imports and the longest case it may start: a first case of a block size autotunes (Linear bfloat16: up to
# ~30 s) or compiles (one fixed config: ~10 s) its Triton kernels.
wants bench && run_stage "benchmark bfloat16" 130 - "$PY" -m benchmarks.gpu_linear --dtypes bfloat16 \
    --layouts 64,32,16,128,csr --sparsities 0.4,0.7,0.85,0.9,0.95,0.99 --repeats 10 --time-budget 90 \
    --out "$OUT" --name linear_gpu_bf16
# float32 has no target: one fixed Triton config (no autotune sweep), unstructured first (no compile at all).
wants bench && run_stage "benchmark float32" 30 - env SPARSEKERN_TRITON_AUTOTUNE=0 "$PY" -m benchmarks.gpu_linear \
    --dtypes float32 --layouts csr,32 --sparsities 0.9,0.99 --repeats 5 --no-compile --time-budget 14 \
    --out "$OUT" --name linear_gpu_fp32
# torch.compile of a lone nn.Conv2d is the same cuDNN call (inductor keeps convolutions as extern kernels)
# after 10-20 s of compiling per shape: left out here, kept in the script's default grid.
wants conv && run_stage "benchmark conv bfloat16" 70 - env SPARSEKERN_TRITON_AUTOTUNE=0 "$PY" -m benchmarks.gpu_conv \
    --dtypes bfloat16 --shapes resnet18:layer1,resnet18:layer3,resnet18:layer2,resnet18:layer2.0.conv1 \
    --layouts 32,64,csr --sparsities 0.5,0.8,0.9,0.95,0.99 --repeats 10 --no-compile --channels-last --time-budget 50 \
    --out "$OUT" --name conv_gpu_bf16

stage "done"
if [ "${#failed[@]}" -ne 0 ]; then
    printf 'FAILED: %s\n' "${failed[@]}"
    exit 1
fi
echo "all stages passed"
