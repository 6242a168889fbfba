"""Build script: the sparsekern Python package plus its C++ (and, where torch has CUDA, CUDA) kernels.

Install torch first, then build against it without build isolation (an isolated build would fetch its own
torch):

    pip install torch==2.13.0
    pip install --no-build-isolation -e .

Environment switches:
    SPARSEKERN_NO_EXT=1      pure-Python install; every op runs its PyTorch reference
    SPARSEKERN_PORTABLE=1    compile for the baseline x86-64 instruction set (wheels), not this host's
    SPARSEKERN_CUDA_ARCHS    CUDA targets, e.g. "80;90" (only when torch has CUDA and CUDA_HOME is set)
"""
import glob
import os

from setuptools import find_packages, setup


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0")


def extensions():
    if _flag("SPARSEKERN_NO_EXT"):
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    root = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp"))) + [os.path.join("csrc", "python_module.cpp")]
    # -fopenmp: at::parallel_for's OpenMP body is compiled into this library; torch ships the same
    # libgomp.so.1, so one runtime serves both. -march=native: a source install may use the host's SIMD.
    cxx = ["-O3", "-std=c++17", "-fopenmp", "-ffp-contract=fast"]
    cxx += [] if _flag("SPARSEKERN_PORTABLE") else ["-march=native", "-mprefer-vector-width=512"]
    kwargs = dict(include_dirs=[os.path.join(root, "csrc")], extra_compile_args={"cxx": cxx},
                  extra_link_args=["-fopenmp"])
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    # Gate on torch having CUDA *and* a toolkit, never on a GPU being present at build time.
    if torch.version.cuda and CUDA_HOME and cuda_sources:
        archs = os.environ.get("SPARSEKERN_CUDA_ARCHS", "80;90").replace(",", ";").split(";")
        # torch >= 2.10's headers use C++20 bit-field initialisers: with -std=c++17 every file would warn
        # (silenced as in tests/cuda/compile_check.sh, which compiles these sources with the same flags).
        nvcc = ["-O3", "-std=c++17", "-diag-suppress", "3306", "-Xcompiler", "-Wno-c++20-extensions"]
        nvcc += [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs if a]
        kwargs["extra_compile_args"]["nvcc"] = nvcc
        ext = CUDAExtension("sparsekern._C", sources + cuda_sources, **kwargs)
    else:
        ext = CppExtension("sparsekern._C", sources, **kwargs)
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = extensions()

setup(
    packages=find_packages(include=["sparsekern", "sparsekern.*"]),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
