#!/usr/bin/env bash
# Compile every csrc/cuda/*.cu with nvcc, for sm_80 and sm_90, against the installed torch's headers, with
# the flags torch's BuildExtension gives a CUDAExtension (so a CPU-only machine with a CUDA toolkit catches
# what would break the GPU build). Objects go to a temporary directory and are thrown away; nothing links.
#
#   tests/cuda/compile_check.sh
#
# Environment: PYTHON (default python) is the interpreter whose torch supplies headers and ABI flag; NVCC
# (default: nvcc on PATH, else $CUDA_HOME/bin/nvcc, else /usr/local/cuda/bin/nvcc) the compiler; JOBS
# (default nproc) how many files compile at once.
# Exit status: 0 when every file compiles (or, with a message, when there is no nvcc), 1 otherwise. Each
# file's result, time and compiler output (warnings included) are printed.
#
# Two flags differ from a real CUDA build, both for headers rather than for our code:
#   * -DC10_CUDA_NO_CMAKE_CONFIGURE_FILE, only when torch lacks c10/cuda/impl/cuda_cmake_macros.h (CPU
#     wheels do not ship that generated header; on Linux it only defines C10_CUDA_BUILD_SHARED_LIBS, which
#     matters on Windows).
#   * torch >= 2.10's headers use C++20 bit-field initialisers (c10/core/AutogradState.h); with -std=c++17
#     (setup.py's flag) every file would print that warning, so it is silenced: -diag-suppress 3306 for the
#     CUDA front end and -Wno-c++20-extensions for the host compiler.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"

nvcc="${NVCC:-}"
if [[ -z "$nvcc" ]]; then
  nvcc="$(command -v nvcc || true)"
  for candidate in "${CUDA_HOME:-}/bin/nvcc" /usr/local/cuda/bin/nvcc; do
    [[ -z "$nvcc" && -x "$candidate" ]] && nvcc="$candidate"
  done
fi
if [[ -z "$nvcc" || ! -x "$nvcc" ]]; then
  echo "compile_check: skipped: nvcc not found (set NVCC, CUDA_HOME or PATH to check the CUDA sources)"
  exit 0
fi

shopt -s nullglob
sources=(csrc/cuda/*.cu)
if [[ ${#sources[@]} -eq 0 ]]; then
  echo "compile_check: no csrc/cuda/*.cu files"
  exit 1
fi

python="${PYTHON:-python}"
torch_flags="$("$python" - <<'EOF'
import os
import torch
from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths

flags = [f"-I{p}" for p in include_paths()]  # the CPU include set: a CPU wheel has no CUDA_HOME
flags.append(f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}")
flags += COMMON_NVCC_FLAGS  # -D__CUDA_NO_HALF_OPERATORS__ ... --expt-relaxed-constexpr
macros = os.path.join(include_paths()[0], "c10", "cuda", "impl", "cuda_cmake_macros.h")
if not os.path.exists(macros):
    flags.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
print(" ".join(flags))
print(torch.__version__)
EOF
)" || { echo "compile_check: could not read torch's build flags with $python" >&2; exit 1; }
torch_version="$(tail -n 1 <<<"$torch_flags")"
read -r -a flags <<<"$(head -n 1 <<<"$torch_flags")"
flags+=(-c -std=c++17 -O1 --compiler-options -fPIC -Icsrc
        -DTORCH_EXTENSION_NAME=_C -DTORCH_API_INCLUDE_EXTENSION_H
        -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
        -diag-suppress 3306 -Xcompiler -Wno-c++20-extensions)

echo "compile_check: $("$nvcc" --version | tail -n 1), torch $torch_version, ${#sources[@]} files, sm_80 + sm_90"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

compile() {  # compile SOURCE INDEX: writes $tmp/INDEX.{log,status,time}
  local start=$SECONDS rc=0
  "$nvcc" "${flags[@]}" "$1" -o "$tmp/$2.o" >"$tmp/$2.log" 2>&1 || rc=$?
  echo "$rc" >"$tmp/$2.status"
  echo "$((SECONDS - start))" >"$tmp/$2.time"
}

jobs_max="${JOBS:-$(nproc)}"
started=$SECONDS
for i in "${!sources[@]}"; do
  while (( $(jobs -rp | wc -l) >= jobs_max )); do wait -n || true; done
  compile "${sources[$i]}" "$i" &
done
wait

failed=0
for i in "${!sources[@]}"; do
  rc="$(cat "$tmp/$i.status")"
  seconds="$(cat "$tmp/$i.time")"
  if [[ "$rc" -eq 0 ]]; then
    warnings="$(grep -ci 'warning' "$tmp/$i.log" || true)"
    printf 'ok     %-40s %4ss  (%s warning lines)\n' "${sources[$i]}" "$seconds" "$warnings"
  else
    printf 'FAILED %-40s %4ss  (nvcc exit %s)\n' "${sources[$i]}" "$seconds" "$rc"
    failed=1
  fi
  [[ -s "$tmp/$i.log" ]] && sed 's/^/    /' "$tmp/$i.log"
done
echo "compile_check: $((SECONDS - started))s in all, ${JOBS:-$(nproc)} at a time"
exit "$failed"
