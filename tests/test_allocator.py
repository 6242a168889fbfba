"""sparsekern.allocator: freed memory stays in the process (no page faults on reuse), and a no-op off glibc."""
import platform
import subprocess
import sys
import textwrap

import pytest

from sparsekern import allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Allocates, touches and frees a 64 MB tensor (above glibc's largest dynamic mmap threshold, 32 MB) round
# after round and prints the fewest minor page faults of one round after the first two (the heap may still
# grow once while aligned blocks settle: one round of the five checked saw that).
FAULTS_SCRIPT = textwrap.dedent("""
    import resource, sys
    import torch
    if sys.argv[1] == "keep":
        from sparsekern.allocator import keep_freed_memory
        print(keep_freed_memory().applied, file=sys.stderr)
    n = 16 << 20  # floats: 64 MB
    counts = []
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.empty(n).fill_(1.0)
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(min(counts[2:]))
""")


def faults_per_round(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, mode], capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_freed_memory_is_reused_without_page_faults():
    pages = (64 << 20) // 4096
    default = faults_per_round("default")
    kept = faults_per_round("keep")
    assert default > pages // 2, f"expected the default allocator to fault a fresh 64 MB block in, got {default}"
    assert kept < pages // 50, f"expected a kept block to be reused without faults, got {kept} per round"


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_keep_freed_memory_reports_what_it_set_and_is_idempotent(monkeypatch):
    monkeypatch.setattr(allocator, "_state", None)
    first = allocator.keep_freed_memory()
    assert first.applied and "M_MMAP_THRESHOLD" in first.description
    assert allocator.keep_freed_memory() is first
    assert allocator.current_setting() is first


def test_without_glibc_it_changes_nothing_and_says_so(monkeypatch):
    monkeypatch.setattr(allocator, "_state", None)
    monkeypatch.setattr(platform, "libc_ver", lambda *a, **k: ("", ""))
    setting = allocator.keep_freed_memory()
    assert not setting.applied and "not glibc" in setting.description


def test_current_setting_before_any_call_is_the_system_default(monkeypatch):
    monkeypatch.setattr(allocator, "_state", None)
    setting = allocator.current_setting()
    assert not setting.applied and "default" in setting.description
