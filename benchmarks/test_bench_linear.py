"""pytest-benchmark suite: one training step (forward + backward) of a 2048→2048 linear layer, batch 256.

    pytest benchmarks/ --benchmark-only                      # all cases
    pytest benchmarks/ --benchmark-only -k "0.95"            # one sparsity
    pytest benchmarks/ --benchmark-only --benchmark-group-by=group --benchmark-columns=median,iqr,min

Cases are grouped by sparsity, so each group's table compares dense and the sparse candidates directly
(pytest-benchmark's own output); ``extra_info`` records the backend and nnz. For ratio tables with SparseProp
and torch.sparse, several shapes and CSV output use ``python -m benchmarks.run`` instead.

These files live outside ``tests/`` on purpose: the unit test run (``pytest tests``, and ``pytest`` with
the project's ``testpaths``) never collects them, and no unit test judges speed.
"""
from __future__ import annotations

import pytest
import torch

from benchmarks import linear_cases as lc

SHAPE = lc.Shape(in_features=2048, out_features=2048, batch=256)
SPARSITIES = (0.9, 0.95, 0.99)
LAYOUTS = [None, (16, 16)]
CANDIDATES = ("dense", "sk_csr", "sk_bsr16", "sk_csr_auto", "sparseprop")
THREADS = 2


@pytest.fixture(scope="module", autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def inputs():
    return lc.make_inputs(SHAPE, seed=0)


@pytest.mark.parametrize("candidate", CANDIDATES)
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_linear_fwd_bwd(benchmark, inputs, sparsity, candidate):
    x, grad = inputs
    dense, cands, skipped = lc.build_candidates(SHAPE, sparsity, [candidate], LAYOUTS, seed=0)
    if candidate in skipped:
        pytest.skip(skipped[candidate])
    (c,) = cands
    # A wrong result must not post a time (and a benchmark run is the only place this runs at full size).
    check = lc.check_candidate(c, dense.weight.detach(), dense.bias.detach(), x, grad)
    assert check.startswith("ok"), f"{candidate} at sparsity {sparsity}: {check}"

    def train_step():
        y = c.forward(x)
        y.backward(grad)

    benchmark.group = f"{SHAPE.spec} sparsity {sparsity}"
    benchmark.extra_info.update(backend=c.resolved_backend, nnz=c.nnz, shape=SHAPE.label, threads=THREADS)
    benchmark.pedantic(train_step, setup=lambda: lc.reset_grads(c, x), rounds=15, warmup_rounds=2, iterations=1)
