"""GPU Linear benchmark: dense cuBLAS (eager and torch.compile), torch.sparse and sparsekern, timed side by side.

    python -m benchmarks.gpu_linear                        # the GPU issue's grid (needs a CUDA GPU)
    python -m benchmarks.gpu_linear --quick                # small shapes, a smoke test (CPU or GPU)
    python -m benchmarks.gpu_linear --layouts 64,128 --dtypes bfloat16 --sparsities 0.5,0.9

One case is (dtype, layout, sparsity) on one shape; its candidates hold the same weights, pruned by the same
mask, and are timed as a training step uses a layer: ``y = layer(x)`` (fwd), then ``y.backward(grad)`` (bwd:
input, weight and bias gradients). On CUDA each phase is timed with CUDA events and every step ends with a
synchronize, so no step's kernels overlap the next; candidates are interleaved one step each per round in a
shuffled order, as in ``benchmarks.run``. Before timing, every candidate's y, dx, dW (kept positions) and db are
checked against a float64 reference on the same device (a failed candidate is not timed).

Candidates:
    dense            nn.Linear in the case's dtype (cuBLAS), all weights
    dense_compiled   torch.compile(nn.Linear) (--no-compile leaves it out)
    torch_sparse     the masked weight as torch.sparse BSR (block layouts: to_sparse_bsr, F.linear) or CSR
                     (unstructured), gradients through autograd where torch supports them (else fwd only)
    sk               sparsekern.SparseLinear.from_dense(..., backend="sparse"): Triton kernels for block
                     masks, CUDA C++ for unstructured ones
    sk_auto          the same with backend="auto"

Reported: medians, ratios to dense (> 1: faster), and for the issue's targets the break-even sparsity of each
layout (where sk's forward+backward median first beats dense's, interpolated between measured sparsities),
the speedup at 90 % and the throughput per kept FLOP (density × speedup).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import platform
import random
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import sparsekern
from sparsekern.masks import random_mask

from .common import REPO_ROOT, Deadline, command_line, compare_to_reference, fmt_ms, fmt_ratio, markdown_table, \
    sparsekern_info, summarize, write_csv

SHAPE = (4096, 4096, 16384)  # in_features, out_features, tokens
QUICK_SHAPE = (256, 256, 512)
SPARSITIES = "0.3,0.4,0.5,0.6,0.7,0.8,0.85,0.9,0.95,0.99"
QUICK_SPARSITIES = "0.5,0.9"
LAYOUTS = "csr,16,32,64,128"
QUICK_LAYOUTS = "csr,16,64"
DTYPES = "bfloat16,float32"
PHASES = ("fwd", "bwd", "fwd+bwd")
# The targets (H100, bfloat16, 4096x4096, 16,384 tokens, forward + input grad + weight grad).
BREAK_EVEN_TARGETS = {"bsr64": 0.40, "bsr32": 0.70, "bsr16": 0.85}
SPEEDUP_TARGET = ("bsr64", 0.9, 4.0)        # layout, sparsity, minimum speedup vs dense
KEPT_FLOP_TARGET = ("bsr128", 0.9)          # layout, minimum fraction of dense throughput per kept FLOP
# Tolerance of the check (max|got - ref| / max|ref| against float64): a float32 GEMM lands near 1e-6, a
# bfloat16 one near 4e-3 (8 mantissa bits); these catch a wrong kernel, not rounding.
CHECK_RTOL = {torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 3e-2}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_linear", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default=None, help="IN x OUT @ TOKENS (default 4096x4096@16384; --quick 256x256@512)")
    add_grid_args(p, SPARSITIES, LAYOUTS, QUICK_LAYOUTS, "linear_gpu")
    args = p.parse_args(argv)
    args.shape = _parse_shape(args.shape) if args.shape else (QUICK_SHAPE if args.quick else SHAPE)
    resolve_grid_args(p, args, SPARSITIES, QUICK_SPARSITIES, LAYOUTS, QUICK_LAYOUTS, "linear_gpu")
    return args


def add_grid_args(p, sparsities: str, layouts: str, quick_layouts: str, stem: str) -> None:
    """The options every GPU benchmark takes (``benchmarks.gpu_conv`` too): the grid, timing and output."""
    p.add_argument("--sparsities", default=None, help=f"comma-separated (default {sparsities})")
    p.add_argument("--layouts", default=None,
                   help=f"'csr' (unstructured) and/or square block sizes (default {layouts}; --quick {quick_layouts})")
    p.add_argument("--dtypes", default=None, help=f"comma-separated (default {DTYPES}; --quick float32)")
    p.add_argument("--tf32", action="store_true",
                   help="allow TF32 in the dense float32 matmuls and convolutions (the Triton kernels compute "
                        "float32 as IEEE float32 either way); default off")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per candidate (default 20, --quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per candidate (default 3, --quick 1)")
    p.add_argument("--no-compile", action="store_true", help="leave out dense_compiled")
    p.add_argument("--time-budget", type=float, default=None, metavar="S",
                   help="start no new case after S seconds (the report names the cases not run); default: none")
    p.add_argument("--device", default=None, help="cuda (default when available) or cpu (smoke tests only)")
    p.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "results"), help="folder for the CSV and markdown")
    p.add_argument("--name", default=None, help=f"file stem (default {stem}_<timestamp>, --quick {stem}_quick)")
    p.add_argument("--quick", action="store_true", help="small shapes, few repeats: a smoke test")


def resolve_grid_args(p, args, sparsities: str, quick_sparsities: str, layouts: str, quick_layouts: str,
                      stem: str) -> None:
    """Defaults and checks for ``add_grid_args``'s options, in place; ``args.out_stem``: the output path
    without its suffix."""
    spec = args.sparsities or (quick_sparsities if args.quick else sparsities)
    args.sparsities = [float(s) for s in spec.split(",")]
    args.layouts = [s.strip() for s in (args.layouts or (quick_layouts if args.quick else layouts)).split(",")]
    for layout in args.layouts:
        if layout != "csr" and not layout.isdigit():
            p.error(f"--layouts: expected 'csr' or a block size like 32, got {layout!r}")
    args.dtypes = [_parse_dtype(p, s) for s in (args.dtypes or ("float32" if args.quick else DTYPES)).split(",")]
    args.repeats = args.repeats or (3 if args.quick else 20)
    args.warmup = args.warmup or (1 if args.quick else 3)
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU is available")
    name = args.name or (f"{stem}_quick" if args.quick else f"{stem}_" + _dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    args.out_stem = str(Path(args.out) / name)


def _parse_shape(spec: str):
    try:
        dims, tokens = spec.split("@")
        n_in, n_out = dims.lower().split("x")
        return int(n_in), int(n_out), int(tokens)
    except ValueError:
        raise SystemExit(f"--shape: expected IN x OUT @ TOKENS like 4096x4096@16384, got {spec!r}") from None


def _parse_dtype(p, name: str) -> torch.dtype:
    dtype = getattr(torch, name.strip(), None)
    if dtype not in CHECK_RTOL:
        p.error(f"--dtypes: expected float32, float16 or bfloat16, got {name!r}")
    return dtype


def layout_key(layout: str) -> str:
    return "csr" if layout == "csr" else f"bsr{layout}"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def why(exc: BaseException, width: int = 120) -> str:
    """An exception in one line: its type and the first ``width`` characters of its message's first line."""
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:width]}"


# ------------------------------------------------------------------------------------------ candidates
class GpuCandidate:
    """One layer under test: ``forward(x)``, its parameters, and how to read its weight gradient at the kept
    positions (row-major order of the mask)."""

    def __init__(self, name, forward, params, weight_grad, bias, mask, backward=True, note=""):
        self.name, self.forward, self.params, self.weight_grad, self.bias = name, forward, params, weight_grad, bias
        self.mask = mask  # the kept weights; None: all of them (dense)
        self.backward, self.note, self.check = backward, note, ""


def _sparsekern(name, dense, mask, block, backend):
    layer = sparsekern.SparseLinear.from_dense(dense, mask, block_size=block, backend=backend)
    note = f"auto→{layer.resolved_backend()}" if backend == "auto" else ""
    return GpuCandidate(name, layer, [layer.weight_values, layer.bias], lambda: layer.weight_values.grad, layer.bias,
                        mask, note=note)


def _torch_sparse(dense, mask, block, x, grad):
    """torch.sparse with the masked weight; backward only if autograd supports it for this layout here."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        masked = dense.weight * mask
        w = masked.to_sparse_bsr((block, block)) if block else masked.to_sparse_csr()
    bias = dense.bias.detach().clone().requires_grad_(True)
    w.requires_grad_(True)

    def forward(inp):
        return F.linear(inp, w, bias)

    def weight_grad():
        g = w.grad
        if g is None:
            return None
        return g.to_dense()[mask] if g.layout != torch.strided else g[mask]

    cand = GpuCandidate("torch_sparse", forward, [w, bias], weight_grad, bias, mask)
    try:  # one trial step: torch's sparse layouts do not all support every gradient on every device
        forward(x).backward(grad)
    except (RuntimeError, NotImplementedError) as exc:
        cand.backward = False
        cand.note = f"fwd only ({why(exc, 80)})"
    cand.params = [w, bias]
    return cand


def build_case(dense, compiled, layout, sparsity, x, grad, seed=0):
    n_out, n_in = dense.weight.shape
    block = None if layout == "csr" else int(layout)
    gen = torch.Generator().manual_seed(seed + 1)
    mask = random_mask((n_out, n_in), sparsity, generator=gen, block_size=block).to(dense.weight.device)
    cands, skipped = [], {}
    cands.append(GpuCandidate("dense", dense, [dense.weight, dense.bias], lambda: dense.weight.grad, dense.bias,
                              None))
    if compiled is not None:
        cands.append(GpuCandidate("dense_compiled", compiled, [dense.weight, dense.bias], lambda: dense.weight.grad,
                                  dense.bias, None))
    builders = {"torch_sparse": lambda: _torch_sparse(dense, mask, block, x, grad),
                "sk": lambda: _sparsekern("sk", dense, mask, block, "sparse"),
                "sk_auto": lambda: _sparsekern("sk_auto", dense, mask, block, "auto")}
    for name, build in builders.items():
        try:
            cands.append(build())
        except Exception as exc:  # noqa: BLE001  (record why, time the others)
            skipped[name] = why(exc)
    return cands, skipped


# ---------------------------------------------------------------------------------------------- timing
def _reset(c, x):
    x.grad = None
    for p in c.params:
        if p is not None:  # a layer without bias
            p.grad = None


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(c, x, grad, device):
    """One step; returns (y, (fwd_ms, bwd_ms, fwd+bwd_ms)). bwd is NaN for forward-only candidates."""
    _reset(c, x)
    if device.type == "cuda":
        e0, e1, e2 = (torch.cuda.Event(enable_timing=True) for _ in range(3))
        e0.record()
        y = c.forward(x)
        e1.record()
        if c.backward:
            y.backward(grad)
        e2.record()
        torch.cuda.synchronize(device)
        fwd, total = e0.elapsed_time(e1), e0.elapsed_time(e2)
    else:
        import time
        t0 = time.perf_counter()
        y = c.forward(x)
        t1 = time.perf_counter()
        if c.backward:
            y.backward(grad)
        t2 = time.perf_counter()
        fwd, total = (t1 - t0) * 1e3, (t2 - t0) * 1e3
    if not c.backward:
        return y, (fwd, float("nan"), float("nan"))
    return y, (fwd, total - fwd, total)


def check(c, dense, x, grad, dtype, device) -> str:
    """y, dx, dW (kept positions; all of them for dense) and db against float64 on the same device, each within
    this dtype's tolerance (CHECK_RTOL)."""
    y, _ = step(c, x, grad, device)
    with torch.no_grad():
        w = dense.weight.detach().double()
        if c.mask is not None:
            w = w * c.mask
        x64, g64 = x.detach().double(), grad.double()
        ref = {"y": x64 @ w.t() + dense.bias.detach().double()}
        got = {"y": y}
        if c.backward:
            dw_ref = g64.t() @ x64
            ref.update({"dx": g64 @ w, "dW": dw_ref if c.mask is None else dw_ref[c.mask], "db": g64.sum(0)})
            got.update({"dx": x.grad, "dW": c.weight_grad(), "db": c.bias.grad if c.bias is not None else None})
        return compare_to_reference(got, ref, rtol=CHECK_RTOL[dtype])


def time_case(cands, x, grad, device, repeats, warmup):
    for c in cands:
        for _ in range(warmup):
            step(c, x, grad, device)
    samples = {c.name: {p: [] for p in PHASES} for c in cands}
    for r in range(repeats):
        order = list(cands)
        random.Random(r).shuffle(order)
        for c in order:
            _, times = step(c, x, grad, device)
            for phase, t in zip(PHASES, times):
                samples[c.name][phase].append(t)
    for c in cands:
        _reset(c, x)
    return samples


def measure_case(cands, skipped, check_one, x, grad, device, args, fields: dict, label: str) -> list[dict]:
    """One case: check every candidate (``check_one(c)`` gives its verdict), time the ones that passed, and
    return a row per candidate (and per candidate that could not be built, ``skipped``: name -> why), each
    starting with ``fields``, the case's coordinates. Prints the forward+backward speedups and ``label``."""
    for c in cands:
        try:
            c.check = check_one(c)
        except Exception as exc:  # noqa: BLE001  (a failed candidate is reported, not timed)
            c.check = "FAIL: " + why(exc, 100)
    samples = time_case([c for c in cands if c.check.startswith("ok")], x, grad, device, args.repeats, args.warmup)
    dense_med = {p: summarize_ms(samples["dense"][p])["median_ms"] for p in PHASES} if "dense" in samples \
        else {p: float("nan") for p in PHASES}
    rows = []
    for c in cands:
        row = {**fields, "candidate": c.name, "check": c.check, "notes": c.note}
        if c.name in samples:
            for p in PHASES:
                s = summarize_ms(samples[c.name][p])
                row[f"{p}_ms"], row[f"{p}_iqr_ms"] = s["median_ms"], s["iqr_ms"]
                row[f"speedup_{p}"] = dense_med[p] / s["median_ms"] if s["median_ms"] else float("nan")
        rows.append(row)
    for name, reason in skipped.items():
        rows.append({**fields, "candidate": name, "check": "not built", "notes": reason})
    print("  " + " ".join(f"{r['candidate']}={fmt_ratio(r.get('speedup_fwd+bwd'))}" for r in rows)
          + f"   [{label}]", flush=True)
    return rows


# -------------------------------------------------------------------------------------------- summary
def break_even(points):
    """Smallest sparsity at which speedup >= 1, interpolated linearly between measured points (sorted by
    sparsity); None if never, the first sparsity if already there."""
    prev = None
    for s, speedup in points:
        if speedup == speedup and speedup >= 1.0:
            if prev is None:
                return s
            s0, r0 = prev
            return s0 + (1.0 - r0) * (s - s0) / (speedup - r0)
        prev = (s, speedup) if speedup == speedup else prev
    return None


def environment(device) -> dict:
    env = {"timestamp": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
           "python": platform.python_version(), "torch": torch.__version__, "device": str(device),
           "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "none (CPU smoke run)",
           "driver": _driver_version(device), "cuda": torch.version.cuda or "none",
           "cudnn": str(torch.backends.cudnn.version() or "none")}
    try:
        import triton
        env["triton"] = triton.__version__
        from sparsekern.triton import tuning
        if device.type != "cuda" and not tuning.INTERPRET:
            env["triton_autotune"] = "n/a (the Triton kernels serve CUDA tensors)"
        elif tuning.AUTOTUNE:
            env["triton_autotune"] = "on: every config of each kernel is compiled and timed on a new shape (untimed)"
        else:
            env["triton_autotune"] = "off: one fixed config per kernel (" + (
                "TRITON_INTERPRET=1)" if tuning.INTERPRET else "SPARSEKERN_TRITON_AUTOTUNE=0)")
    except Exception as exc:  # noqa: BLE001  (no triton, or sparsekern.triton failing to load)
        env.setdefault("triton", "not installed")
        env["triton_autotune"] = f"n/a ({why(exc, 80)})"
    env.update(sparsekern_info())
    return env


def _driver_version(device) -> str:
    if device.type != "cuda":
        return "n/a"
    import subprocess
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i",
                              str(device.index or 0)], capture_output=True, text=True, timeout=20)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def set_precision(args) -> None:
    """IEEE float32 in the dense float32 matmuls and convolutions unless --tf32."""
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32


def main(argv=None) -> int:
    args = parse_args(argv)
    device = args.device
    set_precision(args)
    n_in, n_out, tokens = args.shape
    Path(args.out).mkdir(parents=True, exist_ok=True)
    env = environment(device)
    deadline = Deadline(args.time_budget)
    print(f"# GPU Linear benchmark: {n_in}->{n_out}, {tokens} tokens on {env['gpu']}", flush=True)
    rows = []
    for dtype in args.dtypes:
        torch.manual_seed(0)
        dense = nn.Linear(n_in, n_out).to(device=device, dtype=dtype)
        compiled = None if args.no_compile else torch.compile(dense, dynamic=False)
        gen = torch.Generator().manual_seed(2)
        x = torch.randn(tokens, n_in, generator=gen).to(device=device, dtype=dtype).requires_grad_(True)
        grad = torch.randn(tokens, n_out, generator=gen).to(device=device, dtype=dtype)
        for layout in args.layouts:
            for sparsity in args.sparsities:
                fields = {"dtype": dtype_name(dtype), "layout": layout_key(layout), "sparsity": sparsity}
                label = f"{fields['dtype']} {fields['layout']} {sparsity}"
                if deadline.skip(label):
                    continue
                cands, skipped = build_case(dense, compiled, layout, sparsity, x, grad)
                rows += measure_case(cands, skipped, lambda c: check(c, dense, x, grad, dtype, device), x, grad,
                                     device, args, fields, label)
                write_results(rows, env, args, deadline)
    return finish(write_results(rows, env, args, deadline), rows, args)


def finish(report: str, rows, args) -> int:
    """Print the report; exit status 1 if any candidate failed its check."""
    print(report)
    print(f"wrote {args.out_stem}.csv and {args.out_stem}.md")
    return 1 if any(r["check"].startswith("FAIL") for r in rows) else 0


COLUMNS = ["dtype", "layout", "sparsity", "candidate"] + [f"{p}_ms" for p in PHASES] + \
    [f"{p}_iqr_ms" for p in PHASES] + [f"speedup_{p}" for p in PHASES] + ["check", "notes"]


def write_results(rows, env, args, deadline) -> str:
    """The CSV and the markdown report of the rows so far: called after every case, so a run stopped by a
    time limit keeps what it measured."""
    return save(rows, COLUMNS, render(rows, env, args, deadline), args)


def save(rows, columns, report: str, args) -> str:
    write_csv(Path(f"{args.out_stem}.csv"), rows, columns)
    Path(f"{args.out_stem}.md").write_text(report)
    return report


def summarize_ms(values_ms):
    """common.summarize takes nanoseconds; NaN samples (no backward) give NaN."""
    if not values_ms or values_ms[0] != values_ms[0]:
        return {"median_ms": float("nan"), "iqr_ms": float("nan")}
    return summarize([v * 1e6 for v in values_ms])


def render(rows, env, args, deadline) -> str:
    n_in, n_out, tokens = args.shape
    head = report_head(f"GPU Linear benchmark: {n_in}→{n_out}, {tokens} tokens", env, args, deadline,
                       "benchmarks.gpu_linear")
    body = []
    for dtype in sorted({r["dtype"] for r in rows}):
        body.append(f"## {dtype}: forward+backward speedup vs dense cuBLAS\n")
        body.append(speedup_table(rows, dtype, ("layout", "sparsity")))
        body.append("")
        body.append(targets_section(rows, dtype))
    detail = ["## All rows", "", rows_table(rows, ("dtype", "layout", "sparsity"))]
    return "\n".join(head + body + detail) + "\n"


def report_head(title: str, env, args, deadline, module: str, extra=()) -> list[str]:
    """The report's title and the run's facts: command, machine, versions, precision, repeats, time budget,
    then ``extra`` (label, text) pairs."""
    items = [("Command", f"`{command_line(module)}`"), ("Date", env["timestamp"]),
             ("GPU", f"{env['gpu']} (driver {env['driver']}, CUDA {env['cuda']}, cuDNN {env['cudnn']})"),
             ("Versions", f"Python {env['python']}, torch {env['torch']}, triton {env['triton']}, sparsekern "
                          f"{env['sparsekern_version']} at {env['sparsekern_commit']}"),
             ("Triton autotune", env["triton_autotune"]),
             ("TF32", "allowed" if args.tf32 else "off (float32 is IEEE float32)"),
             ("Repeats / warmup", f"{args.repeats} / {args.warmup}; medians of CUDA-event times (host clock on a "
                                  "CPU), each step synchronized; speedup = dense median / candidate median")]
    if deadline.summary():
        items.append(("Time budget", deadline.summary()))
    items += list(extra)
    return [f"# {title}", ""] + [f"- **{k}**: {v}" for k, v in items] + [""]


CANDIDATE_ORDER = ("dense_compiled", "torch_sparse", "sk", "sk_auto")


def speedup_table(rows, dtype, keys) -> str:
    """A line per case of ``dtype`` (its ``keys``, the last one the sparsity): dense's forward+backward median
    and every other candidate's speedup, or why it has none."""
    mine = [r for r in rows if r["dtype"] == dtype]
    names = [n for n in CANDIDATE_ORDER if any(r["candidate"] == n for r in mine)]
    cases = list(dict.fromkeys(tuple(r[k] for k in keys) for r in mine))
    rank = {prefix: i for i, prefix in enumerate(dict.fromkeys(c[:-1] for c in cases))}
    table = []
    for case in sorted(cases, key=lambda c: (rank[c[:-1]], c[-1])):
        cell = {r["candidate"]: r for r in mine if tuple(r[k] for k in keys) == case}
        dense_ms = cell.get("dense", {}).get("fwd+bwd_ms", float("nan"))
        table.append(list(case) + [fmt_ms(dense_ms)] + [_cell(cell.get(n)) for n in names])
    return markdown_table(list(keys) + ["dense f+b ms"] + names, table)


def rows_table(rows, keys) -> str:
    """Every row: its ``keys``, the candidate, the medians of each phase, the IQR, the speedup and the check."""
    return markdown_table(
        list(keys) + ["candidate", "fwd ms", "bwd ms", "f+b ms", "f+b IQR", "speedup f+b", "check", "notes"],
        [[r[k] for k in keys] + [r["candidate"], fmt_ms(r.get("fwd_ms", float("nan"))),
                                 fmt_ms(r.get("bwd_ms", float("nan"))), fmt_ms(r.get("fwd+bwd_ms", float("nan"))),
                                 fmt_ms(r.get("fwd+bwd_iqr_ms", float("nan"))), fmt_ratio(r.get("speedup_fwd+bwd")),
                                 r["check"], r.get("notes", "")] for r in rows],
        "l" * (len(keys) + 1) + "rrrrr" + "ll")


def _cell(row) -> str:
    """A candidate's forward+backward speedup, its forward speedup marked as such when it has no backward, or
    why it has no time."""
    if row is None:
        return "–"
    if not row["check"].startswith("ok"):
        return row["check"]
    fb = row.get("speedup_fwd+bwd", float("nan"))
    return fmt_ratio(fb) if fb == fb else f"{fmt_ratio(row.get('speedup_fwd'))} (fwd only)"


def targets_section(rows, dtype) -> str:
    """The issue's targets for this dtype (they are stated for bfloat16)."""
    def points(layout):
        return [(r["sparsity"], r.get("speedup_fwd+bwd", float("nan"))) for r in sorted(
            (r for r in rows if r["dtype"] == dtype and r["layout"] == layout and r["candidate"] == "sk"
             and r["check"].startswith("ok")), key=lambda r: r["sparsity"])]
    lines = [f"Targets (stated for bfloat16 on H100; {dtype} here):", ""]
    for layout in sorted({r["layout"] for r in rows if r["dtype"] == dtype}):
        pts = points(layout)
        if not pts:
            continue
        be = break_even(pts)
        target = BREAK_EVEN_TARGETS.get(layout)
        verdict = "" if target is None else (" (target ≤ %.2f: %s)" % (target, "met" if be is not None and
                                                                          be <= target + 1e-9 else "**missed**"))
        lines.append(f"- {layout}: break-even sparsity {'never' if be is None else f'{be:.2f}'}{verdict}")
    layout, s, need = SPEEDUP_TARGET
    got = dict(points(layout)).get(s)
    if got is not None:
        lines.append(f"- {layout} at {s}: {got:.2f}× dense (target ≥ {need}×: {'met' if got >= need else '**missed**'})")
    layout, need = KEPT_FLOP_TARGET
    for s, speedup in points(layout):
        if speedup == speedup:
            eff = (1 - s) * speedup
            lines.append(f"- {layout} at {s}: {eff:.2f} of dense throughput per kept FLOP (target ≥ {need}: "
                         f"{'met' if eff >= need else '**missed**'})")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
