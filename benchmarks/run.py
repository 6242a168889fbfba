"""Benchmark runner: dense and sparse linear layers timed side by side, in one run, reported as ratios.

    python -m benchmarks.run                       # linear suite, default shapes and sparsities
    python -m benchmarks.run --suite crossover     # where do the sparse kernels start to beat dense?
    python -m benchmarks.run --quick               # tiny shapes, a smoke test (< 30 s)

See benchmarks/README.md for what every column means.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import time
from pathlib import Path

DEFAULT_SHAPES = "2048x2048@256,768x3072@2048,4096x1024@128"
QUICK_SHAPES = "256x256@64,128x512@32"
LINEAR_SPARSITIES = "0.5,0.8,0.9,0.95,0.98,0.99"
CROSSOVER_SPARSITIES = "0.0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,0.95"
QUICK_LINEAR_SPARSITIES = "0.5,0.9"
QUICK_CROSSOVER_SPARSITIES = "0.0,0.5,0.9"
AUTO_TARGET = 0.95  # backend="auto" should never be slower than this fraction of dense speed


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Time dense nn.Linear against sparsekern (CSR, BSR, auto), torch.sparse CSR and SparseProp "
                    "in one run (forward, backward, forward+backward), and print speedup ratios.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Shapes are IN x OUT @ BATCH: nn.Linear(IN, OUT) applied to a (BATCH, IN) input.\n"
               "Machines are shared and noisy: compare the ratios, not the absolute times.")
    p.add_argument("--suite", choices=("linear", "crossover"), default="linear",
                   help="linear: all candidates at high sparsities (default); crossover: dense vs sparsekern "
                        "over sparsities 0..0.95, to place backend='auto''s threshold")
    p.add_argument("--shapes", default=None,
                   help=f"comma-separated IN x OUT @ BATCH list (default: {DEFAULT_SHAPES}; --quick: {QUICK_SHAPES})")
    p.add_argument("--sparsities", default=None,
                   help=f"comma-separated fractions of pruned weights (default linear: {LINEAR_SPARSITIES}; "
                        f"crossover: {CROSSOVER_SPARSITIES})")
    p.add_argument("--threads", type=int, default=2,
                   help="torch.set_num_threads and OMP_NUM_THREADS/MKL_NUM_THREADS (default 2)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed steps per candidate per case; medians are over these (default 15, --quick 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per candidate per case (default 3, --quick 1)")
    p.add_argument("--block-sizes", default="csr,16",
                   help="sparsekern layouts: 'csr' = unstructured mask (CSR kernels), 'B' or 'BHxBW' = block mask "
                        "(BSR kernels); default 'csr,16'")
    p.add_argument("--candidates", default=None,
                   help="comma-separated subset to time, e.g. 'dense,sk_csr,sparseprop' (default linear: dense, "
                        "sk_<layout>, sk_<layout>_auto for each layout, torch_csr, sparseprop; crossover: dense "
                        "and the sparsekern ones)")
    p.add_argument("--compile-dense", action="store_true",
                   help="also time torch.compile(nn.Linear) as a second dense baseline (compiles once per case; "
                        "off by default: on CPU inductor lowers a lone Linear to the same MKL GEMM)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="time budget per candidate per case: a candidate slower than budget/repeats per step gets "
                        "fewer repeats (at least 3; recorded in the n column). Default 60, --quick 2")
    p.add_argument("--no-check", action="store_true",
                   help="skip the float64 correctness check of each candidate before timing")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, masks and inputs (default 0)")
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes, few sparsities and repeats: a smoke test of the whole pipeline (< 30 s)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"),
                   help="output directory for the CSV and markdown files (default benchmarks/results/)")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads: expected a positive integer")
    args.shapes = args.shapes or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    if args.sparsities is None:
        if args.suite == "linear":
            args.sparsities = QUICK_LINEAR_SPARSITIES if args.quick else LINEAR_SPARSITIES
        else:
            args.sparsities = QUICK_CROSSOVER_SPARSITIES if args.quick else CROSSOVER_SPARSITIES
    args.repeats = args.repeats if args.repeats is not None else (5 if args.quick else 15)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    args.budget_s = args.budget_s if args.budget_s is not None else (2.0 if args.quick else 60.0)
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    try:
        args.sparsity_list = [float(s) for s in args.sparsities.split(",") if s.strip()]
    except ValueError:
        p.error(f"--sparsities: expected comma-separated numbers, got {args.sparsities!r}")
    if not args.sparsity_list or not all(0.0 <= s <= 1.0 for s in args.sparsity_list):
        p.error(f"--sparsities: expected numbers in [0, 1], got {args.sparsities!r}")
    return args


def set_thread_env(threads: int) -> None:
    """Before torch (and SparseProp's OpenMP backend) load: their runtimes read these at start-up."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def busy_warning(busy_percent: float, when: str) -> str:
    """A warning when other processes kept the CPUs busy while this run was not using them."""
    if busy_percent == busy_percent and busy_percent >= 25:
        return (f"other processes kept the CPUs {busy_percent:.0f}% busy {when}: they compete with the timed "
                "threads, so absolute times and IQRs are inflated and ratios are only roughly right; re-run on a "
                "quiet machine for numbers to quote")
    return ""


# -------------------------------------------------------------------------------------------- running
def run_cases(args, names, layouts, lc, common, torch):
    """Time every shape × sparsity; returns (result rows, skipped {name: reason}, shapes)."""
    shapes = lc.parse_shapes(args.shapes)
    rows, skipped_all = [], {}
    n_cases = len(shapes) * len(args.sparsity_list)
    case_no = 0
    for shape in shapes:
        x, grad = lc.make_inputs(shape, args.seed)
        for sparsity in args.sparsity_list:
            case_no += 1
            t_case = time.perf_counter()
            dense, cands, skipped = lc.build_candidates(shape, sparsity, names, layouts, seed=args.seed)
            for name, why in skipped.items():
                skipped_all.setdefault(name, why)
            timed = []
            for c in cands:
                if args.no_check:
                    c.check = "skipped"
                else:
                    try:
                        c.check = lc.check_candidate(c, dense.weight.detach(), dense.bias.detach(), x, grad)
                    except Exception as exc:  # noqa: BLE001
                        c.check = f"FAIL: {type(exc).__name__}: {exc}"
                if c.check.startswith("FAIL"):
                    log(f"  !! {c.name} at {shape.label} sparsity {sparsity}: {c.check} (not timed)")
                else:
                    timed.append(c)
            samples = lc.time_candidates(timed, x, grad, repeats=args.repeats, warmup=args.warmup,
                                         budget_s=args.budget_s)
            rows.extend(case_rows(args.suite, shape, sparsity, cands, samples, lc, common))
            log(f"[{case_no}/{n_cases}] {shape.label} sparsity {sparsity:g}: {len(timed)} candidates in "
                f"{time.perf_counter() - t_case:.1f} s")
            del dense, cands, timed, samples
    return rows, skipped_all, shapes


def case_rows(suite, shape, sparsity, cands, samples, lc, common):
    """One row per candidate × phase, with speedup vs the best dense baseline and vs SparseProp."""
    stats = {c.name: {p: common.summarize(samples[c.name][p]) for p in lc.PHASES} for c in cands if c.name in samples}
    rows = []
    for c in cands:
        for phase in lc.PHASES:
            st = stats.get(c.name, {}).get(phase) or {"median_ms": float("nan"), "iqr_ms": float("nan"),
                                                     "min_ms": float("nan"), "max_ms": float("nan"), "n": 0}
            dense_meds = {n: stats[n][phase]["median_ms"] for n in (lc.DENSE, lc.DENSE_COMPILED) if n in stats}
            base_name = min(dense_meds, key=dense_meds.get) if dense_meds else ""
            base = dense_meds.get(base_name, float("nan"))
            med = st["median_ms"]
            speedup = base / med if dense_meds and med == med and med > 0 else float("nan")
            base_min = min((stats[n][phase]["min_ms"] for n in dense_meds), default=float("nan"))
            speedup_min = base_min / st["min_ms"] if st["min_ms"] == st["min_ms"] and st["min_ms"] > 0 else float("nan")
            vs_sp = float("nan")
            if c.name.startswith("sk_") and lc.SPARSEPROP in stats and med == med and med > 0:
                vs_sp = stats[lc.SPARSEPROP][phase]["median_ms"] / med
            rows.append({
                "suite": suite, "shape": shape.spec, "in_features": shape.in_features,
                "out_features": shape.out_features, "batch": shape.batch, "sparsity": sparsity,
                "candidate": c.name, "layout": c.layout, "backend": c.resolved_backend, "nnz": c.nnz,
                "density": c.nnz / (shape.in_features * shape.out_features), "phase": phase, **st,
                "dense_baseline": base_name, "dense_median_ms": base, "speedup_vs_dense": speedup,
                "speedup_vs_dense_min": speedup_min,
                "vs_sparseprop": vs_sp, "check": c.check, "notes": "; ".join(c.notes),
            })
    return rows


CSV_COLUMNS = [
    "timestamp", "suite", "cpu_model", "cpu_isa", "threads", "torch_version", "sparsekern_version",
    "sparsekern_commit", "sparsekern_ext", "sparseprop_version", "cpu_busy_start",
    "shape", "in_features", "out_features", "batch", "sparsity", "candidate", "layout", "backend", "nnz",
    "density", "phase", "median_ms", "iqr_ms", "min_ms", "max_ms", "n", "dense_baseline", "dense_median_ms",
    "speedup_vs_dense", "speedup_vs_dense_min", "vs_sparseprop", "check", "notes",
]


# --------------------------------------------------------------------------------------------- tables
def _index(rows):
    return {(r["shape"], r["sparsity"], r["candidate"], r["phase"]): r for r in rows}


def linear_tables(rows, shapes, names, args, lc, common) -> str:
    """A summary (fwd+bwd speedup per candidate) and a detailed table, one of each per shape."""
    idx = _index(rows)
    present = [n for n in names if any(r["candidate"] == n for r in rows)]
    others = [n for n in present if n not in (lc.DENSE, lc.DENSE_COMPILED)]
    has_sp = lc.SPARSEPROP in present
    out = []
    for shape in shapes:
        out.append(f"### {shape.label}  (nn.Linear({shape.in_features}, {shape.out_features}), input "
                   f"({shape.batch}, {shape.in_features}))\n")
        out.append("Forward+backward speedup vs dense (dense median / candidate median; > 1 = faster than dense):\n")
        headers = ["sparsity", "dense f+b ms"] + others
        body = []
        for s in args.sparsity_list:
            d = idx.get((shape.spec, s, lc.DENSE, "fwd+bwd"))
            line = [f"{s:g}", common.fmt_ms(d["median_ms"]) if d else "n/a"]
            for n in others:
                r = idx.get((shape.spec, s, n, "fwd+bwd"))
                line.append(common.fmt_ratio(r["speedup_vs_dense"]) if r else "–")
            body.append(line)
        out.append(common.markdown_table(headers, body) + "\n")

        headers = ["sparsity", "candidate", "backend", "fwd ms", "bwd ms", "f+b ms", "f+b IQR", "n",
                   "speedup fwd", "speedup bwd", "speedup f+b"]
        if has_sp:
            headers.append("vs SparseProp f+b")
        headers += ["check", "notes"]
        body = []
        for s in args.sparsity_list:
            for n in present:
                ph = {p: idx.get((shape.spec, s, n, p)) for p in lc.PHASES}
                if ph["fwd"] is None:
                    continue
                line = [f"{s:g}", n, ph["fwd"]["backend"]]
                line += [common.fmt_ms(ph[p]["median_ms"]) for p in lc.PHASES]
                line += [common.fmt_ms(ph["fwd+bwd"]["iqr_ms"]), ph["fwd+bwd"]["n"]]
                line += [common.fmt_ratio(ph[p]["speedup_vs_dense"]) for p in lc.PHASES]
                if has_sp:
                    line.append(common.fmt_ratio(ph["fwd+bwd"]["vs_sparseprop"]))
                line += [ph["fwd"]["check"], ph["fwd"]["notes"]]
                body.append(line)
        out.append(common.markdown_table(headers, body, align="ll" + "l" + "r" * (len(headers) - 5) + "ll") + "\n")
    return "\n".join(out)


def crossover_tables(rows, shapes, layouts, args, lc, common) -> tuple[str, dict]:
    """Per shape and layout: the sparsity where sparse starts to win, and auto's ratio at every sparsity."""
    idx = _index(rows)
    sparsities = sorted(args.sparsity_list)
    out, summary, crossover = [], [], {}
    worst_auto = None
    for shape in shapes:
        out.append(f"### {shape.label}  (nn.Linear({shape.in_features}, {shape.out_features}), input "
                   f"({shape.batch}, {shape.in_features}))\n")
        headers = ["sparsity", "dense f+b ms"]
        for block in layouts:
            ln = lc.layout_name(block)
            headers += [f"{ln} sparse", f"{ln} auto", f"{ln} auto→"]
        body = []
        for s in sparsities:
            d = idx.get((shape.spec, s, lc.DENSE, "fwd+bwd"))
            line = [f"{s:g}", common.fmt_ms(d["median_ms"]) if d else "n/a"]
            for block in layouts:
                ln = lc.layout_name(block)
                sp = idx.get((shape.spec, s, f"sk_{ln}", "fwd+bwd"))
                au = idx.get((shape.spec, s, f"sk_{ln}_auto", "fwd+bwd"))
                line.append(common.fmt_ratio(sp["speedup_vs_dense"]) if sp else "–")
                if au:
                    ratio = au["speedup_vs_dense"]
                    cell = common.fmt_ratio(ratio)
                    if ratio == ratio and ratio < AUTO_TARGET:
                        cell = f"**{cell} <{AUTO_TARGET}**"
                    if ratio == ratio and (worst_auto is None or ratio < worst_auto[0]):
                        worst_auto = (ratio, shape.label, s, ln)
                    line += [cell, au["backend"]]
                else:
                    line += ["–", ""]
            body.append(line)
        out.append("Forward+backward speedup vs dense (> 1 = faster than dense):\n")
        out.append(common.markdown_table(headers, body) + "\n")
        for block in layouts:
            ln = lc.layout_name(block)
            series = [(s, idx[(shape.spec, s, f"sk_{ln}", "fwd+bwd")]["speedup_vs_dense"])
                      for s in sparsities if (shape.spec, s, f"sk_{ln}", "fwd+bwd") in idx]
            first = next((s for s, r in series if r >= 1.0), None)
            stable = None
            for i, (s, _) in enumerate(series):
                if all(r >= 1.0 for _, r in series[i:]):
                    stable = s
                    break
            crossover[(shape.spec, ln)] = stable
            summary.append([shape.label, ln, "never" if first is None else f"{first:g}",
                            "never" if stable is None else f"{stable:g}"])
    text = ["## Crossover summary\n",
            "Lowest sparsity at which sparsekern backend='sparse' is at least as fast as dense (forward+backward), "
            "first hit and the point from which it stays ≥ dense at every higher sparsity measured:\n",
            common.markdown_table(["shape", "layout", "first sparsity ≥ dense", "stays ≥ dense from"], summary),
            ""]
    per_layout = {}
    for block in layouts:
        ln = lc.layout_name(block)
        vals = [crossover[(sh.spec, ln)] for sh in shapes]
        per_layout[ln] = None if any(v is None for v in vals) else max(vals)
    text.append("Threshold for backend='auto' that is safe on every shape measured (max over shapes of "
                "'stays ≥ dense from'): " + ", ".join(
                    f"{ln}: {'none (sparse never stays ahead)' if v is None else f'{v:g}'}"
                    for ln, v in per_layout.items()) + "\n")
    if worst_auto is not None:
        ok = worst_auto[0] >= AUTO_TARGET
        text.append(f"backend='auto' target (never slower than {AUTO_TARGET}× dense): "
                    f"{'MET' if ok else 'MISSED'}; worst auto/dense speed {worst_auto[0]:.2f}× at {worst_auto[1]}, "
                    f"sparsity {worst_auto[2]:g}, layout {worst_auto[3]}\n")
    return "\n".join(text) + "\n## Per shape\n\n" + "\n".join(out), per_layout


def candidate_section(names, skipped, lc) -> str:
    lines = [f"- `{n}`: {lc.describe(n)}" for n in names if n not in skipped]
    lines += [f"- `{n}`: NOT TIMED: {why}" for n, why in skipped.items()]
    return "\n".join(lines)


METHOD = (
    "Each step: `x` (B, in) contiguous with requires_grad, `y = layer(x)` with autograd on (timed as fwd), "
    "then `y.backward(grad)` with a fixed contiguous (B, out) grad (timed as bwd); fwd+bwd is the span of "
    "both in the same step. Gradients are reset to None before each step (untimed). Candidates are "
    "interleaved, one step each per round in a shuffled order (seeded), so drift on a shared machine and "
    "the cache state a step leaves behind hit all of them alike. "
    "Times are medians over the repeats (IQR = interquartile range). speedup = best dense median / "
    "candidate median (> 1: faster than dense); vs SparseProp = SparseProp median / sparsekern median "
    "(> 1: sparsekern faster). Before timing, every candidate's y, dx, dW (kept positions) and db are checked "
    "against a float64 reference (check column: worst relative error). Compare ratios, not absolute times."
)


# ----------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    set_thread_env(args.threads)
    t_start = time.perf_counter()

    import torch
    torch.set_num_threads(args.threads)
    from . import common
    from . import linear_cases as lc

    layouts = lc.parse_layouts(args.block_sizes)
    sk = lc.sparsekern_names(layouts, auto=True)
    if args.candidates:
        names = [n.strip() for n in args.candidates.split(",") if n.strip()]
    elif args.suite == "linear":
        names = [lc.DENSE] + sk + [lc.TORCH_CSR, lc.SPARSEPROP]
    else:
        names = [lc.DENSE] + sk
    if args.compile_dense and lc.DENSE_COMPILED not in names:
        names.insert(1, lc.DENSE_COMPILED)
    if lc.DENSE not in names and lc.DENSE_COMPILED not in names:
        names.insert(0, lc.DENSE)  # ratios need a dense baseline in the same run

    env = common.environment(args.threads)
    if env["sparsekern_ext_error"]:
        log(f"WARNING: sparsekern's compiled extension is not loaded ({env['sparsekern_ext_error']}); "
            "sparsekern candidates run the pure-PyTorch reference")
    log(f"{args.suite} suite on {env['cpu_model']}, {args.threads} threads, torch {env['torch_version']}, "
        f"sparsekern {env['sparsekern_commit']} (ext {env['sparsekern_ext']}); candidates: {', '.join(names)}")

    busy = busy_warning(env["cpu_busy_start"], "before the run")
    if busy:
        log("WARNING: " + busy)
    rows, skipped, shapes = run_cases(args, names, layouts, lc, common, torch)
    env["cpu_busy_end"] = common.cpu_busy_percent()
    busy = busy or busy_warning(env["cpu_busy_end"], "after the run")
    elapsed = time.perf_counter() - t_start
    for r in rows:
        r.update({k: env[k] for k in CSV_COLUMNS if k in env})

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    extra = {"Shapes": ", ".join(f"{s.label}" for s in shapes),
             "Sparsities": ", ".join(f"{s:g}" for s in args.sparsity_list),
             "Repeats / warmup": f"{args.repeats} / {args.warmup} per candidate per case "
                                 f"(budget {args.budget_s:g} s per candidate per case)",
             "Wall time": f"{elapsed:.0f} s"}
    if busy:
        extra["NOISE WARNING"] = busy

    if args.suite == "linear":
        tables = linear_tables(rows, shapes, names, args, lc, common)
        title = "Linear layer benchmark (CPU)"
        base = "linear_cpu_quick" if args.quick else f"linear_cpu_{stamp}"
        latest = None if args.quick else "linear_cpu_latest"
    else:
        tables, _ = crossover_tables(rows, shapes, layouts, args, lc, common)
        title = "Dense vs sparse crossover (CPU)"
        base = "crossover_cpu_quick" if args.quick else "crossover_cpu"
        latest = None

    md = "\n".join([f"# {title}\n", common.machine_section(env, extra), "",
                    "## Candidates\n", candidate_section(names, skipped, lc), "",
                    "## Method\n", METHOD, "", "## Results\n", tables])
    print(tables)
    written = []
    for stem in filter(None, (base, latest)):
        common.write_csv(out_dir / f"{stem}.csv", rows, CSV_COLUMNS)
        (out_dir / f"{stem}.md").write_text(md)
        written += [out_dir / f"{stem}.csv", out_dir / f"{stem}.md"]
    log("wrote " + ", ".join(str(p) for p in written) + f" ({elapsed:.1f} s)")
    failed = sorted({r["candidate"] for r in rows if str(r["check"]).startswith("FAIL")})
    if failed:
        log(f"CHECK FAILED for: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
