"""The Triton kernels compile for sm_80 and sm_90 without a GPU (tests/triton_aot.py --quick).

The interpreter tests never compile the kernels; this does, in a subprocess with TRITON_INTERPRET=0 (this
process has the interpreter's kernels), for the fixed config at a rectangular 128x32 block in bfloat16 (the
dtype the interpreter cannot test), every variant (the four Linear ones and the three Conv2d ones) for
sm_80 and sm_90: 14 compiles, 30-50 s on two cores. The full sweep over every tuned config is
``TRITON_INTERPRET=0 python tests/triton_aot.py``.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")


def _can_compile_for_nvidia():
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.backends import backends
    except ImportError:
        return False
    return "nvidia" in backends


@pytest.mark.skipif(not _can_compile_for_nvidia(), reason="this triton has no NVIDIA backend to compile with")
def test_kernels_compile_for_ampere_and_hopper():
    here = Path(__file__).parent
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    result = subprocess.run([sys.executable, str(here / "triton_aot.py"), "--quick"], cwd=here, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert result.stdout.count("ok  ") == 14, result.stdout
