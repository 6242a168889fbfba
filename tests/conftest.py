"""Shared pytest setup.

``TRITON_INTERPRET`` must be set before anything imports triton (and before any ``@triton.jit`` runs), so
it is the very first thing this file does: the Triton kernels then run on CPU tensors under the interpreter.
``SPARSEKERN_TRITON_AUTOTUNE`` likewise, before sparsekern is imported.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
# On a GPU (TRITON_INTERPRET=0) the Triton kernels run one fixed config instead of compiling and timing every
# autotune config for each new shape, which would take minutes over the test matrix; the tests check
# results, and test_triton_bsr.py runs each config once. Read when sparsekern.triton is imported.
os.environ.setdefault("SPARSEKERN_TRITON_AUTOTUNE", "0")

import zlib  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_torch(request):
    """A fixed seed per test, different between tests: reproducible, and no test depends on another's draws.

    Derived from the test id with crc32 (Python's ``hash`` of a str is salted per process).
    """
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield


@pytest.fixture
def poisoned_empty(monkeypatch):
    """torch.empty that fills floating tensors with NaN: unwritten output elements cannot pass as results."""
    real_empty = torch.empty

    def empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t

    monkeypatch.setattr(torch, "empty", empty)


@pytest.fixture
def only_config():
    """Pin an autotuned Triton kernel to one config: with a single config Triton's autotuner runs it
    unbenchmarked. Restored after the test."""
    pinned = []

    def pin(kernel, config):
        pinned.append((kernel, kernel.configs))
        kernel.configs = [config]

    yield pin
    for kernel, configs in reversed(pinned):
        kernel.configs = configs
