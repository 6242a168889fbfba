#!/usr/bin/env bash
# Configure (Ninja), build and run the C++ kernel tests with ctest.
#
#   tests/cpp/run_ctest.sh [--sanitize] [--portable] [BUILD_DIR]
#
#   BUILD_DIR    default <repo>/build/cpp (<repo>/build/cpp-sanitize with --sanitize; -portable appended
#                with --portable); a relative BUILD_DIR is taken from the current directory
#   --sanitize   SPARSEKERN_SANITIZE=ON: library and tests built with -fsanitize=address,undefined and run
#                under ASan + UBSan (any report fails the test)
#   --portable   SPARSEKERN_NATIVE=OFF: the x86-64 baseline build (setup.py's SPARSEKERN_PORTABLE=1); the
#                kernels' SIMD vectors are then 16 bytes instead of 64, so other batch-tail paths run
#
# Environment: PYTHON (default python3) is the interpreter whose torch is built against; JOBS (default
# nproc) is the build and ctest parallelism; ASAN_EXTRA (default detect_leaks=1) goes into ASAN_OPTIONS.
#
# Measured on a 2-core AMD EPYC Zen 3 VM (AVX2, g++ 12, torch 2.13.0 CPU), fresh build dir, with the torch
# headers precompiled (SPARSEKERN_PCH, CMakeLists.txt):
#   normal:      2m18 (configure 3 s, build 126 s for 28 translation units, ctest 7 s)
#   --sanitize:  5m00 (configure 4 s, build 269 s at -O1, ctest 22 s); at -O3 without the precompiled
#                headers it was ~9 min
#   --portable:  like normal
#
# Sanitizer notes (what was found to work here):
#   * No LD_PRELOAD is needed: the test binary itself is linked with -fsanitize=address, so libasan is its
#     first DT_NEEDED and loads before libtorch (uninstrumented; only our library and tests are). An
#     LD_PRELOAD=$(g++ -print-file-name=libasan.so) is only needed to load an instrumented library into an
#     uninstrumented program, e.g. python importing an ASan-built sparsekern/_C.so.
#   * LeakSanitizer works here and reports nothing through libtorch, so leak checking stays on. Where it
#     cannot run (under ptrace, some sandboxes) pass ASAN_EXTRA=detect_leaks=0 to this script.
#   * ASAN_OPTIONS/UBSAN_OPTIONS are set per test by tests/cpp/CMakeLists.txt (halt on the first report),
#     so a plain `ctest` in the build dir runs the same way.
#   * OMP_WAIT_POLICY=PASSIVE (also set per test) keeps idle OpenMP threads from spinning: the tests run
#     thousands of tiny kernels with up to 3 threads on 2 cores, and spinning made them ~20x slower.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
sanitize=OFF
native=ON
build=""
for arg in "$@"; do
  case "$arg" in
    --sanitize) sanitize=ON ;;
    --portable) native=OFF ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    -*) echo "run_ctest.sh: unknown option $arg" >&2; exit 2 ;;
    *) build="$arg" ;;
  esac
done
if [[ -z "$build" ]]; then
  build="$repo/build/cpp"
  [[ "$sanitize" == ON ]] && build="$repo/build/cpp-sanitize"
  [[ "$native" == OFF ]] && build="${build}-portable"
fi
[[ "$build" == /* ]] || build="$PWD/$build"

python="${PYTHON:-python3}"
python_exe="$("$python" -c 'import sys; print(sys.executable)')"
torch_prefix="$("$python" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
jobs="${JOBS:-$(nproc)}"

echo "== sparsekern C++ tests: build dir $build (sanitize=$sanitize native=$native)"
start=$SECONDS
cmake -S "$repo" -B "$build" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$torch_prefix" \
  -DPython3_EXECUTABLE="$python_exe" \
  -DSPARSEKERN_SANITIZE="$sanitize" \
  -DSPARSEKERN_NATIVE="$native" \
  -DSPARSEKERN_BUILD_TESTS=ON \
  -DSPARSEKERN_ASAN_OPTIONS="${ASAN_EXTRA:-detect_leaks=1}"
configured=$SECONDS
cmake --build "$build" -j "$jobs"
built=$SECONDS
# The per-test environment (OMP_WAIT_POLICY; ASAN_OPTIONS, UBSAN_OPTIONS) comes from tests/cpp/CMakeLists.txt.
ctest --test-dir "$build" --output-on-failure -j "$jobs"
tested=$SECONDS
echo "== configure $((configured - start)) s, build $((built - configured)) s, ctest $((tested - built)) s"
