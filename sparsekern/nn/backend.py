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

# The same on CUDA, per layout kind: empty until measured on a GPU (`python -m benchmarks.gpu_linear`, run by
# benchmarks/gpu_session.sh on a lent GPU). Until a kind has an entry, "auto" runs the dense fallback on CUDA
# even where a compiled kernel serves it (backend="sparse" runs that kernel): an unmeasured crossover must not
# make "auto" slower than dense.
CUDA_MIN_SPARSITY: dict[str, float] = {}


def conv_min_sparsity(kernel_size, stride, groups: int, in_channels: int, out_pixels: int) -> float:
    """Smallest sparsity at which the compiled CPU conv kernels beat dense oneDNN in forward+backward, for a
    SparseConv2d whose output map has ``out_pixels`` pixels per sample (> 1: never; dense always).

    Measured with `python -m benchmarks.run --suite conv --shapes resnet18` and `--shapes vgg16,mobilenetv2`,
    `--sparsities 0.5,0.6,0.7,0.8,0.9,0.95,0.98,0.99 --repeats 11` (benchmarks/results/conv_cpu_latest.md,
    conv_cpu_vgg16_mobilenetv2_latest.md): batch 64, 2 threads, float32, AMD EPYC Zen 3. The sparse kernels'
    advantage grows with the map (dense oneDNN is least efficient on few channels at large maps, the sparse
    plane kernels most efficient there), so the threshold falls with it. Sparse at the threshold measured
    1.0-1.5x dense (3x3 on >= 32x32: 1.15-1.5x at 0.6; >= 16x16: 1.4-1.5x at 0.7; smaller: 1.3-2.1x at 0.8;
    1x1 on >= 8x8: 1.0-1.8x at 0.5, smaller: 0.9-1.3x at 0.8, where the dense fallback measured 0.89-0.9x;
    stride-1 depthwise on >= 8x8: 1.4-1.8x at 0.5). Strided depthwise convs
    never beat dense (0.4-1.0x). Below 0.5 nothing was measured, so nothing below 0.5 is called sparse.
    """
    kernel_taps = kernel_size[0] * kernel_size[1]
    if groups > 1 and in_channels == groups:  # depthwise
        return 0.5 if tuple(stride) == (1, 1) and out_pixels >= 64 else 1.01
    if kernel_taps == 1:  # pointwise
        return 0.5 if out_pixels >= 64 else 0.8
    if out_pixels >= 1024:
        return 0.6
    if out_pixels >= 256:
        return 0.7
    return 0.8


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    return backend


def resolve_backend(backend: str, layout_kind: str, sparsity: float, device_type: str,
                    min_sparsity: float | None = None) -> str:
    """The backend ``"auto"`` stands for, given the layer's layout kind ("csr", "bsr" for SparseLinear,
    "conv2d_csr" / "conv2d_bsr" for SparseConv2d), sparsity and device; ``min_sparsity`` overrides the CPU table's crossover
    (SparseConv2d's depends on its shape: ``conv_min_sparsity``). On CUDA the crossover comes from
    ``CUDA_MIN_SPARSITY`` (empty until measured: dense)."""
    if backend != "auto":
        return backend
    if not _extension.has_compiled_kernels(device_type, layout_kind):
        return "dense"
    if device_type == "cpu":
        threshold = CPU_MIN_SPARSITY[layout_kind] if min_sparsity is None else min_sparsity
    else:
        threshold = CUDA_MIN_SPARSITY.get(layout_kind)
        if threshold is None:
            return "dense"
    # Tolerance: a mask built for sparsity s keeps round((1-s)·n) weights, so its exact sparsity can fall a
    # hair below s (0.69999992 for 768x3072 at 0.7); that must not flip the backend.
    return "sparse" if sparsity >= threshold - 1e-4 else "dense"
