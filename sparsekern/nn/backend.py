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

# Conv2d (CSR, SparseConv2d): PROVISIONAL, not measured. A guess more conservative than the Linear figure, used
# until benchmarks/ measure the conv crossover; replace it with the measured figure then, and say how it was
# measured as above.
CPU_CONV_MIN_SPARSITY = 0.80
CPU_MIN_SPARSITY["conv2d_csr"] = CPU_CONV_MIN_SPARSITY


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    return backend


def resolve_backend(backend: str, layout_kind: str, sparsity: float, device_type: str) -> str:
    """The backend ``"auto"`` stands for, given the layer's layout kind (a key of ``CPU_MIN_SPARSITY``: "csr",
    "bsr" for SparseLinear, "conv2d_csr" for SparseConv2d) and sparsity."""
    if backend != "auto":
        return backend
    if not _extension.has_compiled_kernels(device_type):
        return "dense"
    # Tolerance: a mask built for sparsity s keeps round((1-s)·n) weights, so its exact sparsity can fall a
    # hair below s (0.69999992 for 768x3072 at 0.7); that must not flip the backend.
    return "sparse" if sparsity >= CPU_MIN_SPARSITY[layout_kind] - 1e-4 else "dense"
