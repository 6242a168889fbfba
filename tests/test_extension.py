"""The compiled extension is loaded when built, serves the CPU ops, and the package works without it."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import torch

import sparsekern
from sparsekern import _extension

OPS = ["csr_spmm", "csr_sddmm", "bsr_spmm", "bsr_sddmm"]


def test_extension_loaded_unless_disabled():
    """This install was built with the extension: it must load (a silent ImportError would quietly route every
    CPU call to the slow reference, and the kernel tests would test the reference twice)."""
    if os.environ.get("SPARSEKERN_NO_EXT", "0") not in ("", "0"):
        assert sparsekern.extension_available is False
        return
    assert sparsekern.extension_available is True, f"sparsekern._C failed to load: {_extension.LOAD_ERROR}"
    assert _extension.LOAD_ERROR is None
    assert _extension.has_compiled_kernels("cpu") and not _extension.has_compiled_kernels("cuda")


def test_dispatch_registrations():
    for op in OPS:
        qualname = f"sparsekern::{op}"
        # The reference is the fallback for every backend ...
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CompositeExplicitAutograd")
        # ... and the C++ kernel overrides it on CPU exactly when the extension is loaded.
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualname, "CPU") == sparsekern.extension_available


_NO_EXT_SCRIPT = textwrap.dedent("""
    import torch
    import sparsekern
    from sparsekern import SparseLinear, _extension
    from torch import nn

    assert sparsekern.extension_available is False, sparsekern.extension_available
    assert _extension.LOAD_ERROR == "disabled by SPARSEKERN_NO_EXT", _extension.LOAD_ERROR
    for op in ("csr_spmm", "csr_sddmm", "bsr_spmm", "bsr_sddmm"):
        assert not torch._C._dispatch_has_kernel_for_dispatch_key("sparsekern::" + op, "CPU"), op

    torch.manual_seed(0)
    for block_size in (None, (2, 3)):
        lin = nn.Linear(12, 10, dtype=torch.float64)
        grid = torch.rand(5, 4) > 0.5
        grid[0] = False  # a fully pruned block row
        mask = grid.repeat_interleave(2, 0).repeat_interleave(3, 1) if block_size else torch.rand(10, 12) > 0.5
        assert 0 < int(mask.sum()) < mask.numel()
        layer = SparseLinear.from_dense(lin, mask, block_size=block_size, backend="sparse")
        # Without compiled kernels, "auto" means the dense GEMM.
        assert SparseLinear.from_dense(lin, mask, block_size=block_size).resolved_backend() == "dense"

        ref = nn.Linear(12, 10, dtype=torch.float64)
        with torch.no_grad():
            ref.weight.copy_(lin.weight * mask)
            ref.bias.copy_(lin.bias)
        x = torch.randn(3, 7, 12, dtype=torch.float64)
        g = torch.randn(3, 7, 10, dtype=torch.float64)
        xs, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        ys, yr = layer(xs), ref(xr)
        ys.backward(g)
        yr.backward(g)
        torch.testing.assert_close(ys, yr, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(xs.grad, xr.grad, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.weight_values.grad, ref.weight.grad[mask], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.bias.grad, ref.bias.grad, rtol=1e-12, atol=1e-12)
        assert layer.weight_values.grad.shape == (int(mask.sum()),)
    print("NO_EXT_OK")
""")


def test_package_works_without_extension():
    env = dict(os.environ, SPARSEKERN_NO_EXT="1")
    result = subprocess.run([sys.executable, "-c", _NO_EXT_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "NO_EXT_OK" in result.stdout
