"""Every CUDA-served sparse op once (Linear and Conv2d, CUDA C++ and Triton), on small odd shapes, for
compute-sanitizer (memcheck, racecheck).

    compute-sanitizer --tool memcheck --error-exitcode 1 python3 tests/cuda/sanitize_smoke.py

Small on purpose: under the sanitizer every access is instrumented (tens of times slower). The shapes
exercise the edges a kernel can get wrong: a batch that is not a multiple of any tile, fully pruned rows and
columns, a padded feature-major operand, an empty batch. Each result is also compared with the pure-PyTorch
reference on the CPU in float64, so the script fails on wrong numbers as well as on bad accesses.
Needs a CUDA device (benchmarks/gpu_session.sh runs it); with the argument `cpu` it runs on the CPU instead.
"""
from __future__ import annotations

import sys

import torch

import sparsekern
from sparsekern import reference
from sparsekern.layout import CSRLayout
from sparsekern.masks import build_masks, random_mask

ops = torch.ops.sparsekern


def _close(name, got, ref, rtol):
    err = float((got.detach().double().cpu() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)) if ref.numel() else 0.0
    ok = err <= rtol
    print(f"  {name:40s} rel err {err:.1e} {'ok' if ok else 'FAIL'}")
    return ok


def _mask(n_rows, n_cols, density, gen):
    mask = torch.rand(n_rows, n_cols, generator=gen) < density
    mask[1] = False        # a fully pruned row
    mask[:, 2] = False     # a fully pruned column
    return mask


def unstructured(device, dtype, batch, gen, n_rows=37, n_cols=53) -> bool:
    layout = CSRLayout.from_mask(_mask(n_rows, n_cols, 0.2, gen))
    lt = layout.tensors()
    values = torch.randn(layout.nnz, generator=gen, dtype=torch.float64)
    dense = torch.randn(n_cols, batch, generator=gen, dtype=torch.float64)
    other = torch.randn(n_rows, batch, generator=gen, dtype=torch.float64)
    dl = [t.to(device) for t in lt]
    v, d, o = (t.to(device, dtype) for t in (values, dense, other))
    rtol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 2e-2, torch.float16: 4e-3}[dtype]
    ok = _close(f"csr_spmm {dtype} {n_rows}x{n_cols} B={batch}", ops.csr_spmm(v, *dl, d), reference.csr_spmm(values, *lt, dense), rtol)
    ok &= _close(f"csr_spmm_bt {dtype} B={batch}", ops.csr_spmm_bt(v, *dl, d, None),
                 reference.csr_spmm(values, *lt, dense).t(), rtol)
    ok &= _close(f"csr_sddmm {dtype} B={batch}", ops.csr_sddmm(o, d, *dl),
                 reference.csr_sddmm(other, dense, *lt), rtol)
    # A padded feature-major operand (row stride > batch), as sparsekern.transpose lays activations out.
    padded = torch.zeros(n_cols, batch + 5, device=device, dtype=dtype)[:, :batch]
    padded.copy_(d)
    ok &= _close(f"csr_spmm padded {dtype} B={batch}", ops.csr_spmm(v, *dl, padded),
                 reference.csr_spmm(values, *lt, dense), rtol)
    return ok


def layer(device, block) -> bool:
    """A whole SparseLinear step on the device (forward, input, weight and bias gradients)."""
    torch.manual_seed(0)
    dense = torch.nn.Linear(64, 48)
    mask = random_mask((48, 64), 0.8, block_size=block)
    sl = sparsekern.SparseLinear.from_dense(dense, mask, block_size=block, backend="sparse").to(device)
    x = torch.randn(13, 64, requires_grad=True)
    xd = x.detach().to(device).requires_grad_(True)
    y = sl(xd)
    y.backward(torch.ones_like(y))
    w = dense.weight.detach().double() * mask
    ref_y = x.detach().double() @ w.t() + dense.bias.detach().double()
    ones = torch.ones(13, 48, dtype=torch.float64)
    ref_dx = ones @ w
    ref_dw = (ones.t() @ x.detach().double())[mask]  # the kept weights, row-major: weight_values' order
    name = "csr" if block is None else f"bsr{block}"
    return (_close(f"SparseLinear {name} y", y, ref_y, 1e-5) & _close(f"SparseLinear {name} dx", xd.grad, ref_dx, 1e-5)
            & _close(f"SparseLinear {name} dW", sl.weight_values.grad, ref_dw, 1e-5)
            & _close(f"SparseLinear {name} db", sl.bias.grad, ones.sum(0), 1e-5))


def conv_layer(device, block, channels_last) -> bool:
    """A whole SparseConv2d step on the device: unstructured masks run the im2col lowering onto the CUDA C++
    kernels, block masks the Triton implicit-GEMM kernels (strided, padded, odd image, both memory formats)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(32, 48, 3, stride=2, padding=1)
    shape = tuple(conv.weight.shape)
    if block is None:
        mask = torch.rand(shape) < 0.3
    else:
        mask = build_masks({"w": torch.rand(shape)}, 0.5, granularity="block", block_size=block)["w"]
    layer = sparsekern.SparseConv2d.from_dense(conv, mask, block_size=block, backend="sparse").to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, 32, 9, 7)
    xd = x.to(device).contiguous(memory_format=fmt).detach().clone(memory_format=fmt).requires_grad_(True)
    y = layer(xd)
    g = torch.randn(y.shape, dtype=torch.float64)
    y.backward(g.to(device, y.dtype).contiguous(memory_format=fmt))
    w = (conv.weight.detach().double() * mask).requires_grad_(True)
    b = conv.bias.detach().double().requires_grad_(True)
    x64 = x.double().requires_grad_(True)
    ref = torch.nn.functional.conv2d(x64, w, b, stride=2, padding=1)
    ref.backward(g)
    name = f"SparseConv2d {'csr' if block is None else f'bsr{block}'} {'NHWC' if channels_last else 'NCHW'}"
    return (_close(f"{name} y", y, ref.detach(), 1e-5) & _close(f"{name} dx", xd.grad, x64.grad, 1e-5)
            & _close(f"{name} dW", layer.weight_values.grad, w.grad[mask], 1e-5)
            & _close(f"{name} db", layer.bias.grad, b.grad, 1e-5))


def main(argv) -> int:
    # `python tests/cuda/sanitize_smoke.py cpu` runs the same calls on the CPU: a check of this script itself.
    device = torch.device(argv[1] if len(argv) > 1 else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to sanitize")
        return 1
    gen = torch.Generator().manual_seed(0)
    ok = True
    for dtype in (torch.float32, torch.float64):
        for batch in (0, 1, 33, 130):
            ok &= unstructured(device, dtype, batch, gen)
    # Enough rows that the launch plan keeps 16-byte packs (V = 4 float32, 8 bfloat16) on a 132-SM GPU.
    ok &= unstructured(device, torch.float32, 128, gen, n_rows=4500, n_cols=96)
    if device.type == "cuda":  # the compiled CPU kernels take float32/float64 only
        ok &= unstructured(device, torch.bfloat16, 256, gen, n_rows=4500, n_cols=96)
    for block in (None, 16):
        ok &= layer(device, block)
    for block, channels_last in ((None, False), (16, False), (16, True)):
        ok &= conv_layer(device, block, channels_last)
    if device.type == "cuda":
        torch.cuda.synchronize()
    print("sanitize smoke:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
