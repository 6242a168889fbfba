"""Which backend a sparse layer runs: the sparse kernels or the dense masked GEMM.

``"sparse"`` runs the sparsekern ops (compiled kernel where one exists, else the reference).
``"dense"`` is the named dense fallback (``dense_fallback.py``): the kept values are expanded into a dense
weight and the dense GEMMs (MKL/cuBLAS) run. It skips nothing; it exists because at low sparsity a dense
GEMM is faster.
``"auto"`` picks the sparse kernels at and above the sparsity where they start to win on this machine.
"""
from __future__ import annotations

from .. import _extension

BACKENDS = ("auto", "sparse", "dense")

# Smallest sparsity at which the compiled CPU kernels beat dense MKL in forward+backward, per layout.
# Measured with `python -m benchmarks.run --suite crossover` (benchmarks/results/crossover_cpu.md): 2 threads,
# float32, shapes 2048x2048@256, 768x3072@2048, 4096x1024@128. CSR was 0.80-0.94x dense at 0.65 and
# 0.89-1.09x at 0.7 (the dense fallback runs at 0.85-0.98x); 16x16 BSR 0.82-1.17x at 0.65 and 0.95-1.35x at
# 0.7.
CPU_MIN_SPARSITY = {"csr": 0.70, "bsr": 0.70}


def conv_min_sparsity(kernel_size, groups: int, in_channels: int, out_pixels: int) -> float:
    """Smallest sparsity at which the compiled CPU conv kernels beat dense oneDNN in forward+backward, for a
    SparseConv2d whose output map has ``out_pixels`` pixels per sample (> 1: never; dense always).

    Measured with `python -m benchmarks.run --suite conv --shapes resnet18|vgg16|mobilenetv2 --sparsities
    0.5,0.6,0.7,0.8,0.9 --candidates dense,sk_csr,sk_csr_auto` (benchmarks/results/conv_crossover_*.md): batch
    64, 2 threads, float32. The sparse kernels' advantage grows with the map (dense oneDNN is least efficient
    on few channels at large maps, the sparse plane kernels most efficient there), so the threshold falls
    with it; each step keeps a margin of >= 1.1x over dense at the measured cells. Below 0.5 nothing was
    measured, so nothing below 0.5 is called sparse.
    """
    kernel_taps = kernel_size[0] * kernel_size[1]
    if groups > 1 and in_channels == groups:  # depthwise: sparse only pays on large maps
        return 0.5 if out_pixels >= 256 else 1.01
    if kernel_taps == 1:  # pointwise
        return 0.5 if out_pixels >= 256 else 0.8
    if out_pixels >= 1024:
        return 0.5
    if out_pixels >= 256:
        return 0.7
    return 0.8


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    return backend


def resolve_backend(backend: str, layout_kind: str, sparsity: float, device_type: str,
                    min_sparsity: float | None = None) -> str:
    """The backend ``"auto"`` stands for, given the layer's layout kind (a key of ``CPU_MIN_SPARSITY``: "csr",
    "bsr" for SparseLinear) and sparsity; ``min_sparsity`` overrides the table's crossover (SparseConv2d's
    depends on its shape: ``conv_min_sparsity``)."""
    if backend != "auto":
        return backend
    if not _extension.has_compiled_kernels(device_type):
        return "dense"
    threshold = CPU_MIN_SPARSITY[layout_kind] if min_sparsity is None else min_sparsity
    # Tolerance: a mask built for sparsity s keeps round((1-s)·n) weights, so its exact sparsity can fall a
    # hair below s (0.69999992 for 768x3072 at 0.7); that must not flip the backend.
    return "sparse" if sparsity >= threshold - 1e-4 else "dense"
