"""What the benchmark suites share: machine/version metadata, the candidate and its interleaved timer, the
check against a float64 reference, robust statistics and CSV/markdown writers.

A suite (``linear_cases``, ``conv_cases``) builds :class:`Candidate` objects for one shape × sparsity and
computes its float64 reference; everything from there on (checking, timing, statistics, output) is here.

Import this only after the thread environment is set (``benchmarks.run`` does that first): it imports torch.
"""
from __future__ import annotations

import csv
import datetime as _dt
import gc
import hashlib
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa_flags() -> str:
    """The SIMD/matrix extensions that matter for these kernels, as listed in /proc/cpuinfo."""
    wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_vnni", "avx512_fp16",
              "amx_tile", "amx_bf16", "amx_int8")
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return " ".join(w for w in wanted if w in flags)
    except OSError:
        pass
    return ""


def loadavg() -> str:
    try:
        return "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        return "n/a"


def cpu_busy_percent(interval: float = 1.0) -> float:
    """How busy all CPUs were over ``interval`` seconds (from /proc/stat), sampled while we are idle.

    On a shared machine this is the share of the cores other processes took; NaN where unavailable.
    """
    def snapshot():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return idle, sum(fields[:8])
    try:
        idle0, total0 = snapshot()
        time.sleep(interval)
        idle1, total1 = snapshot()
    except (OSError, ValueError, IndexError):
        return float("nan")
    total = total1 - total0
    return 100.0 * (1 - (idle1 - idle0) / total) if total > 0 else float("nan")


def cpu_times() -> tuple[int, int, int]:
    """(busy, total) clock ticks of all CPUs since boot (/proc/stat) and this process's own CPU ticks (all its
    threads, /proc/self/stat utime + stime); the same unit (USER_HZ), so ``others_busy_percent`` can subtract."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])
    with open("/proc/self/stat") as f:
        stat = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)": the command may contain spaces
    own = int(stat[11]) + int(stat[12])  # utime, stime (fields 14, 15 of proc(5))
    return total - idle, total, own


def others_busy_percent(start, end) -> float:
    """The share of all CPUs (in %) that processes other than this one used between two ``cpu_times()``.

    With 2 CPUs, one other process running flat out is 50 %. Timing with as many threads as CPUs, any of it
    is preemption: an OpenMP barrier then waits a whole scheduler slice for the preempted thread (on the
    2-CPU benchmark box a small conv step went from 0.3 ms to 84 ms while one other process ran). NaN where
    /proc is unavailable.
    """
    if start is None or end is None:
        return float("nan")
    total = end[1] - start[1]
    if total <= 0:
        return float("nan")
    return max(0.0, 100.0 * ((end[0] - start[0]) - (end[2] - start[2])) / total)


def try_cpu_times():
    try:
        return cpu_times()
    except (OSError, ValueError, IndexError):
        return None


def wait_for_quiet(threshold: float, max_wait_s: float, log=None, interval: float = 0.5) -> tuple[float, float]:
    """Sleep until other processes use at most ``threshold`` % of the CPUs over ``interval`` (we are idle),
    or ``max_wait_s`` has passed. Returns (seconds waited, the last busy %)."""
    waited, busy, said = 0.0, float("nan"), False
    while True:
        a = try_cpu_times()
        time.sleep(interval)
        busy = others_busy_percent(a, try_cpu_times())
        if not busy > threshold or waited + interval > max_wait_s:  # NaN (no /proc): do not wait
            return waited + interval, busy
        waited += interval
        if log is not None and not said:
            log(f"  waiting for the CPUs to go quiet (others use {busy:.0f}%; up to {max_wait_s:g} s)")
            said = True


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", "--no-optional-locks", *args], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def sparsekern_info() -> dict:
    """Version, git commit (+dirty flag for the kernel/package sources) and a hash of the loaded extension.

    The extension hash matters: the C++ extension may be rebuilt between runs at the same commit.
    """
    import sparsekern
    from sparsekern import _extension

    commit = _git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = _git("status", "--porcelain", "--", "sparsekern", "csrc", "setup.py")
    ext_file, ext_hash, ext_mtime = "", "none", ""
    if _extension.AVAILABLE:
        from sparsekern import _C
        ext_file = getattr(_C, "__file__", "") or ""
        if ext_file and os.path.exists(ext_file):
            with open(ext_file, "rb") as f:
                ext_hash = hashlib.sha256(f.read()).hexdigest()[:12]
            ext_mtime = _dt.datetime.fromtimestamp(os.path.getmtime(ext_file)).isoformat(timespec="seconds")
    return {
        "sparsekern_version": sparsekern.__version__,
        "sparsekern_commit": commit + ("+dirty" if dirty else ""),
        "sparsekern_ext": ext_hash,
        "sparsekern_ext_mtime": ext_mtime,
        "sparsekern_ext_error": _extension.LOAD_ERROR or "",
    }


def sparseprop_version() -> str:
    try:
        from importlib.metadata import version
        return version("sparseprop")
    except Exception:  # noqa: BLE001  (not installed, or installed without metadata)
        return "not installed"


def environment(threads: int) -> dict:
    """Everything a result row needs to be reproducible and comparable."""
    info = {
        "timestamp": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_isa": cpu_isa_flags(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS", ""),
        "allocator": allocator_setting(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "sparseprop_version": sparseprop_version(),
        "loadavg_start": loadavg(),
        "cpu_busy_start": cpu_busy_percent(),
    }
    info.update(sparsekern_info())
    return info


def allocator_setting() -> str:
    """How freed memory is handled in this process (sparsekern.allocator): page faults per step depend on it."""
    from sparsekern import allocator
    return allocator.current_setting().description


def command_line(module: str = "benchmarks.run") -> str:
    return f"python -m {module}" + "".join(" " + _quote(a) for a in sys.argv[1:])


def _quote(arg: str) -> str:
    import shlex
    return shlex.quote(arg)


# ------------------------------------------------------------------------------------- the candidate
@dataclass
class Candidate:
    """One layer implementation under test, as a training step uses it."""
    name: str
    layout: str                                   # "dense", "csr", "bsr16", ...
    forward: Callable[[torch.Tensor], torch.Tensor]
    params: list[torch.Tensor]                    # gradients reset before every step
    mask: torch.Tensor | None                     # the kept weights (None: all of them)
    weight_grad: Callable[[], torch.Tensor]       # weight gradient at the kept positions, row-major order
    bias: torch.Tensor | None
    resolved_backend: str = ""
    nnz: int = 0
    notes: list[str] = field(default_factory=list)
    check: str = ""


# A check fails when max|candidate - reference| > CHECK_RTOL * max|reference| (float32 vs float64).
CHECK_RTOL = 1e-3


def compare_to_reference(got: dict, ref: dict, rtol: float = CHECK_RTOL) -> str:
    """``"ok <worst relative error>"`` or ``"FAIL: ..."``: each ``got[key]`` against the float64 ``ref[key]``.

    The error of a tensor is ``max|got - ref| / max|ref|``, which fails above ``rtol`` (default: the float32
    bar; a 16-bit candidate needs its dtype's); a missing tensor or one with the wrong number of elements
    fails too.
    """
    worst = 0.0
    for key, r in ref.items():
        g = got[key]
        if g is None:
            return f"FAIL: no {key}"
        g = g.detach().reshape(r.shape) if g.numel() == r.numel() else None
        if g is None:
            return f"FAIL: {key} has {got[key].numel()} elements, expected {r.numel()}"
        if r.numel() == 0:  # e.g. the weight gradient of a layer that keeps no weight
            continue
        err = float((g.double() - r).abs().max() / r.abs().max().clamp_min(1e-30))
        if not err <= rtol:
            return f"FAIL: {key} rel err {err:.1e}"
        worst = max(worst, err)
    return f"ok {worst:.0e}"


# ------------------------------------------------------------------------------------------- timing
def reset_grads(c: Candidate, x: torch.Tensor) -> None:
    x.grad = None
    for p in c.params:
        if p is not None:
            p.grad = None


def step(c: Candidate, x, grad):
    """One training step of the layer; returns (y, (fwd_ns, bwd_ns, fwd+bwd_ns))."""
    reset_grads(c, x)
    t0 = time.perf_counter_ns()
    y = c.forward(x)
    t1 = time.perf_counter_ns()
    y.backward(grad)
    t2 = time.perf_counter_ns()
    return y, (t1 - t0, t2 - t1, t2 - t0)


PHASES = ("fwd", "bwd", "fwd+bwd")


def time_candidates(candidates: list[Candidate], x, grad, *, repeats: int, warmup: int,
                    budget_s: float = 60.0, min_repeats: int = 3, progress=None) -> dict:
    """Interleaved timing: round r runs one step of every candidate, in a shuffled order (seeded by r).

    Interleaving spreads slow drift of a shared machine (other jobs, thermal) evenly over the candidates,
    so the ratios stay fair even when absolute times move. The order is shuffled, not rotated: with a
    fixed order each candidate always ran right after the same neighbour and inherited its cache state (a
    layer after another sparse layer with the same input ran 5-9% faster than the same layer after dense,
    whose 16 MB weight had flushed the caches). A candidate whose warm step is so slow that
    ``repeats`` steps would exceed ``budget_s`` gets fewer repeats (never fewer than ``min_repeats``); the
    ``n`` column records how many it got.

    Returns ``{name: {"fwd": [ns...], "bwd": [...], "fwd+bwd": [...]}}``.
    """
    quota = {}
    for c in candidates:
        last = 0
        for _ in range(max(warmup, 1)):
            _, (_, _, last) = step(c, x, grad)
        quota[c.name] = repeats if last * repeats <= budget_s * 1e9 else max(min_repeats, int(budget_s * 1e9 // last))
        if quota[c.name] < repeats:
            c.notes.append(f"{quota[c.name]} repeats (time budget)")
    samples = {c.name: {p: [] for p in PHASES} for c in candidates}
    rounds = max(quota.values(), default=0)
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            order = list(candidates)
            random.Random(r).shuffle(order)
            for c in order:
                if len(samples[c.name]["fwd"]) >= quota[c.name]:
                    continue
                _, times = step(c, x, grad)
                for phase, t in zip(PHASES, times):
                    samples[c.name][phase].append(t)
            if progress is not None:
                progress(r + 1, rounds)
    finally:
        if gc_was_enabled:
            gc.enable()
    reset_grads_all(candidates, x)
    return samples


def reset_grads_all(candidates, x) -> None:
    for c in candidates:
        reset_grads(c, x)


class Deadline:
    """A run's time budget in seconds from now (None: no limit), checked before each case: a run under a
    stage's time limit then stops starting cases and writes its report, rather than being killed mid-case.
    ``left_out`` names the cases it did not start."""

    def __init__(self, seconds: float | None):
        self.seconds, self.start, self.left_out = seconds, time.monotonic(), []

    def skip(self, case: str) -> bool:
        """True (and ``case`` recorded as left out) once the budget is spent."""
        if self.seconds is not None and time.monotonic() - self.start >= self.seconds:
            self.left_out.append(case)
            return True
        return False

    def summary(self, shown: int = 8) -> str:
        """One line for a report: the budget and what it left out ('' without a budget)."""
        if self.seconds is None:
            return ""
        if not self.left_out:
            return f"{self.seconds:g} s, every case started"
        names = ", ".join(self.left_out[:shown]) + (", …" if len(self.left_out) > shown else "")
        return f"{self.seconds:g} s, spent: {len(self.left_out)} case(s) not run ({names})"


# ---------------------------------------------------------------------------------------- statistics
def quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated quantile of an already sorted list (numpy's default method)."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(samples_ns: list[int]) -> dict:
    """median / IQR / min / max in milliseconds over the timed repeats."""
    ms = sorted(s / 1e6 for s in samples_ns)
    return {
        "median_ms": quantile(ms, 0.5),
        "iqr_ms": quantile(ms, 0.75) - quantile(ms, 0.25),
        "min_ms": ms[0] if ms else float("nan"),
        "max_ms": ms[-1] if ms else float("nan"),
        "n": len(ms),
    }


# --------------------------------------------------------------------------------------------- output
def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _csv_value(row.get(k, "")) for k in columns})


def _csv_value(value):
    if isinstance(value, float):
        return "" if value != value else f"{value:.6g}"  # NaN (not applicable) -> empty cell
    return value


def markdown_table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """A GitHub markdown table; ``align`` is one char per column ('l' or 'r'), default: first left, rest right."""
    align = align or ("l" + "r" * (len(headers) - 1))
    sep = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def machine_section(env: dict, extra: dict | None = None, module: str = "benchmarks.run") -> str:
    items = [
        ("Command", f"`{command_line(module)}`"),
        ("Date", env["timestamp"]),
        ("CPU", f"{env['cpu_model']} ({env['logical_cpus']} logical CPUs; ISA: {env['cpu_isa'] or 'n/a'}; "
                f"torch CPU capability {env['torch_cpu_capability']})"),
        ("Threads", f"{env['threads']} (torch.get_num_threads()={env['torch_threads']}, "
                    f"OMP_NUM_THREADS={env['omp_num_threads_env'] or 'unset'})"),
        ("Allocator", env.get("allocator", "n/a")),
        ("Other load", f"CPUs {env['cpu_busy_start']:.0f}% busy in the second before the run, "
                       f"{env.get('cpu_busy_end', float('nan')):.0f}% in the second after; load average "
                       f"(1/5/15 min) {env['loadavg_start']} at start"),
        ("Python / torch", f"{env['python_version']} / {env['torch_version']}"),
        ("sparsekern", f"{env['sparsekern_version']} at {env['sparsekern_commit']}, extension sha256 "
                       f"{env['sparsekern_ext']} (built {env['sparsekern_ext_mtime'] or 'n/a'})"),
        ("SparseProp", env["sparseprop_version"]),
    ]
    if env.get("sparsekern_ext_error"):
        items.append(("WARNING", f"compiled extension not loaded ({env['sparsekern_ext_error']}): sparsekern "
                                 "ran its pure-PyTorch reference"))
    for k, v in (extra or {}).items():
        items.append((k, v))
    return "\n".join(f"- **{k}**: {v}" for k, v in items)


def fmt_ms(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    return f"{value:.3f}" if value < 10 else f"{value:.2f}" if value < 100 else f"{value:.1f}"


def fmt_ratio(value) -> str:
    if value is None or value == "" or value != value:
        return "–"
    return f"{value:.2f}×"
