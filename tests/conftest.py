"""Shared pytest setup.

``TRITON_INTERPRET`` must be set before anything imports triton (and before any ``@triton.jit`` runs), so
it is the very first thing this file does: the Triton kernels then run on CPU tensors under the interpreter.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

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
