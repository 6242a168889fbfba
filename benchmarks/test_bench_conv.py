"""pytest-benchmark suite: one training step (forward + backward) of CIFAR ResNet-18 3×3 conv layers, batch 64.

    pytest benchmarks/test_bench_conv.py --benchmark-only                  # all cases
    pytest benchmarks/ --benchmark-only -k "conv and 0.95"                 # one sparsity
    pytest benchmarks/ --benchmark-only --benchmark-group-by=group --benchmark-columns=median,iqr,min

Layers: ResNet-18's layer1 3×3 (64→64 at 32×32: spatially large, few channels) and layer3 3×3 (256→256 at
8×8: many channels, small maps). Cases are grouped by layer × sparsity, so each group's table compares dense
nn.Conv2d, sparsekern.SparseConv2d (backend "sparse" and "auto") and SparseProp's two conv kernels directly
(pytest-benchmark's own output); ``extra_info`` records the backend and nnz. For ratio tables over all of
ResNet-18's / VGG16's / MobileNetV2's conv shapes and CSV output use ``python -m benchmarks.run --suite conv``.

These files live outside ``tests/`` on purpose: the unit test run never collects them, and no unit test
judges speed.
"""
from __future__ import annotations

import pytest
import torch

from benchmarks import conv_cases as cc

SHAPES = [s for s in cc.group_shapes("resnet18", batch=64) if s.name in ("layer1 3×3", "layer3 3×3")]
SPARSITIES = (0.9, 0.95, 0.98)
CANDIDATES = (cc.DENSE, cc.SK_CSR, cc.SK_CSR_AUTO, cc.SPARSEPROP, cc.SPARSEPROP_ON)
THREADS = 2


@pytest.fixture(scope="module", autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def inputs():
    return {shape.spec: cc.make_inputs(shape, seed=0) for shape in SHAPES}


@pytest.mark.parametrize("candidate", CANDIDATES)
@pytest.mark.parametrize("sparsity", SPARSITIES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.spec)
def test_conv_fwd_bwd(benchmark, inputs, shape, sparsity, candidate):
    x, grad = inputs[shape.spec]
    dense, cands, skipped = cc.build_candidates(shape, sparsity, [candidate], seed=0)
    if candidate in skipped:
        pytest.skip(skipped[candidate])
    (c,) = cands
    # A wrong result must not post a time (and a benchmark run is the only place this runs at full size).
    check = cc.check_candidate(c, dense, x, grad)
    assert check.startswith("ok"), f"{candidate} at {shape.label}, sparsity {sparsity}: {check}"

    def train_step():
        y = c.forward(x)
        y.backward(grad)

    benchmark.group = f"conv {shape.spec} sparsity {sparsity}"
    benchmark.extra_info.update(backend=c.resolved_backend, nnz=c.nnz, shape=shape.label, threads=THREADS)
    benchmark.pedantic(train_step, setup=lambda: cc.reset_grads(c, x), rounds=15, warmup_rounds=2, iterations=1)
