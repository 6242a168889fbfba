"""Benchmark runner: dense and sparse layers timed side by side, in one run, reported as ratios.

    python -m benchmarks.run                       # linear suite, default shapes and sparsities
    python -m benchmarks.run --suite crossover     # where do the sparse kernels start to beat dense?
    python -m benchmarks.run --quick               # tiny shapes, a smoke test (< 30 s)
    python -m benchmarks.run --suite conv          # Conv2d: CIFAR ResNet-18 conv shapes (--shapes vgg16,...)
    python -m benchmarks.run --suite conv --quick  # tiny conv layers, a smoke test (< 60 s)

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
CONV_SHAPES = "resnet18"  # groups: resnet18, vgg16, mobilenetv2 (benchmarks/conv_cases.py)
# --quick: tiny layers of each kind (plain 3×3, strided 1×1, depthwise), batch 8 (SparseProp's batch-vectorised
# conv forward needs a multiple of 8: at batch 4 it returns wrong outputs).
QUICK_CONV_SHAPES = "16x16k3s1p1@8b8,16x32k1s2p0@8b8,16x16k3s1p1g16@8b8"
CONV_SPARSITIES = LINEAR_SPARSITIES
QUICK_CONV_SPARSITIES = "0.5,0.9"
CONV_BATCH = 64
AUTO_TARGET = 0.95  # backend="auto" should never be slower than this fraction of dense speed
# The conv targets: CIFAR ResNet-18 3×3 layers, forward+backward, sparsekern backend="sparse".
CONV_DENSE_TARGETS = {0.95: 5.0, 0.98: 8.0}   # speedup vs dense at these sparsities
CONV_SPARSEPROP_TARGET = 1.5                   # speedup vs (the faster) SparseProp at the same sparsities


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Time dense nn.Linear against sparsekern (CSR, BSR, auto), torch.sparse CSR and SparseProp "
                    "in one run (forward, backward, forward+backward), and print speedup ratios; --suite conv "
                    "does the same for nn.Conv2d against sparsekern.SparseConv2d and SparseProp's SparseConv2d.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Linear shapes are IN x OUT @ BATCH: nn.Linear(IN, OUT) applied to a (BATCH, IN) input.\n"
               "Conv shapes are groups (resnet18, vgg16, mobilenetv2) or layers CINxCOUTkKsSpP[gG]@H[xW][bB],\n"
               "e.g. 64x128k3s2p1@32: nn.Conv2d(64, 128, 3, stride=2, padding=1) on a (--batch, 64, 32, 32) input.\n"
               "Machines are shared and noisy: compare the ratios, not the absolute times.")
    p.add_argument("--suite", choices=("linear", "crossover", "conv"), default="linear",
                   help="linear: all candidates at high sparsities (default); crossover: dense vs sparsekern "
                        "over sparsities 0..0.95, to place backend='auto''s threshold; conv: Conv2d layers of "
                        "CIFAR ResNet-18 / VGG16 / MobileNetV2")
    p.add_argument("--shapes", default=None,
                   help=f"linear/crossover: comma-separated IN x OUT @ BATCH list (default: {DEFAULT_SHAPES}; "
                        f"--quick: {QUICK_SHAPES}). conv: groups resnet18, vgg16, mobilenetv2 and/or layers "
                        f"CINxCOUTkKsSpP[gG]@H[xW][bB] (default: resnet18; --quick: tiny layers)")
    p.add_argument("--batch", type=int, default=CONV_BATCH,
                   help=f"conv suite: batch of the named groups and of layers without bB (default {CONV_BATCH})")
    p.add_argument("--sparsities", default=None,
                   help=f"comma-separated fractions of pruned weights (default linear and conv: "
                        f"{LINEAR_SPARSITIES}; crossover: {CROSSOVER_SPARSITIES})")
    p.add_argument("--threads", type=int, default=2,
                   help="torch.set_num_threads and OMP_NUM_THREADS/MKL_NUM_THREADS (default 2)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed steps per candidate per case; medians are over these (default 15, conv 11, "
                        "--quick 5)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps per candidate per case (default 3, conv 2, --quick 1)")
    p.add_argument("--block-sizes", default="csr,16",
                   help="sparsekern layouts: 'csr' = unstructured mask (CSR kernels), 'B' or 'BHxBW' = block mask "
                        "(BSR kernels); default 'csr,16'")
    p.add_argument("--candidates", default=None,
                   help="comma-separated subset to time, e.g. 'dense,sk_csr,sparseprop' (default linear: dense, "
                        "sk_<layout>, sk_<layout>_auto for each layout, torch_csr, sparseprop; crossover: dense "
                        "and the sparsekern ones; conv: dense, sk_csr, sk_csr_auto, sparseprop, sparseprop_on)")
    p.add_argument("--compile-dense", action="store_true",
                   help="also time torch.compile(nn.Linear / nn.Conv2d) as a second dense baseline (compiles once "
                        "per case; off by default: on CPU inductor lowers a lone Linear to the same MKL GEMM)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="time budget per candidate per case: a candidate slower than budget/repeats per step gets "
                        "fewer repeats (at least 3; recorded in the n column). Default 60, conv 8, --quick 2")
    p.add_argument("--quiet-threshold", type=float, default=10.0,
                   help="contention control: a case counts as disturbed when other processes used more than this "
                        "%% of all CPUs while it was timed (default 10)")
    p.add_argument("--quiet-wait-s", type=float, default=None,
                   help="contention control: before each case, wait up to this long for other processes to drop "
                        "below --quiet-threshold (default conv 120; linear, crossover and --quick 0 = off)")
    p.add_argument("--busy-retries", type=int, default=None,
                   help="contention control: re-time a disturbed case up to this many times and keep the least "
                        "disturbed attempt (default conv 3; linear, crossover and --quick 0 = off)")
    p.add_argument("--no-check", action="store_true",
                   help="skip the float64 correctness check of each candidate before timing")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, masks and inputs (default 0)")
    p.add_argument("--quick", action="store_true",
                   help="tiny shapes, few sparsities and repeats: a smoke test of the whole pipeline (< 30 s; "
                        "conv < 60 s)")
    p.add_argument("--no-keep-freed-memory", action="store_true",
                   help="leave glibc's allocator at its defaults (freed blocks go back to the system, every step "
                        "faults its pages in again); by default the runner keeps freed memory, as the training "
                        "CLI does (sparsekern/allocator.py), so neither dense nor sparse pays page faults")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"),
                   help="output directory for the CSV and markdown files (default benchmarks/results/)")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads: expected a positive integer")
    conv = args.suite == "conv"
    if args.batch < 1:
        p.error("--batch: expected a positive integer")
    if conv:
        args.shapes = args.shapes or (QUICK_CONV_SHAPES if args.quick else CONV_SHAPES)
    else:
        args.shapes = args.shapes or (QUICK_SHAPES if args.quick else DEFAULT_SHAPES)
    if args.sparsities is None:
        if args.suite == "linear":
            args.sparsities = QUICK_LINEAR_SPARSITIES if args.quick else LINEAR_SPARSITIES
        elif conv:
            args.sparsities = QUICK_CONV_SPARSITIES if args.quick else CONV_SPARSITIES
        else:
            args.sparsities = QUICK_CROSSOVER_SPARSITIES if args.quick else CROSSOVER_SPARSITIES
    args.repeats = args.repeats if args.repeats is not None else (5 if args.quick else 11 if conv else 15)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2 if conv else 3)
    args.budget_s = args.budget_s if args.budget_s is not None else (2.0 if args.quick else 8.0 if conv else 60.0)
    # Contention control is on for full conv runs only: --quick is a functional smoke test that must stay fast.
    if args.quiet_wait_s is None:
        args.quiet_wait_s = 120.0 if conv and not args.quick else 0.0
    if args.busy_retries is None:
        args.busy_retries = 3 if conv and not args.quick else 0
    if args.quiet_wait_s < 0 or args.busy_retries < 0:
        p.error("--quiet-wait-s and --busy-retries must be >= 0")
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
def run_cases(args, names, layouts, lc, common, shapes, check):
    """Time every shape × sparsity; returns (result rows, skipped {name: {shape spec: reason}}).

    ``lc`` is the suite's case module (``linear_cases`` or ``conv_cases``); ``check(candidate, dense layer, x,
    grad, cache)`` compares a candidate with the float64 reference (``cache``: a dict per shape × sparsity).
    """
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
                skipped_all.setdefault(name, {})[shape.spec] = why
            timed, ref_cache = [], {}
            for c in cands:
                if args.no_check:
                    c.check = "skipped"
                else:
                    try:
                        c.check = check(c, dense, x, grad, ref_cache)
                    except Exception as exc:  # noqa: BLE001
                        c.check = f"FAIL: {type(exc).__name__}: {exc}"
                if c.check.startswith("FAIL"):
                    log(f"  !! {c.name} at {shape.label} sparsity {sparsity}: {c.check} (not timed)")
                else:
                    timed.append(c)
            samples, busy, attempts = time_case(args, timed, x, grad, common)
            case = case_rows(args.suite, shape, sparsity, cands, samples, lc, common)
            for r in case:
                r.update(others_busy_pct=busy, attempts=attempts)
            rows.extend(case)
            log(f"[{case_no}/{n_cases}] {shape.label} sparsity {sparsity:g}: {len(timed)} candidates in "
                f"{time.perf_counter() - t_case:.1f} s" + (f" (others used {busy:.0f}% of the CPUs"
                                                           f"{f', {attempts} attempts' if attempts > 1 else ''})"
                                                           if contention_control(args) else ""))
            del dense, cands, timed, samples, ref_cache
    return rows, skipped_all


def contention_control(args) -> bool:
    return args.busy_retries > 0 or args.quiet_wait_s > 0


def time_case(args, timed, x, grad, common):
    """Time one case's candidates; returns (samples, % of the CPUs other processes used meanwhile, attempts).

    With contention control on (the conv suite's default), wait for the other processes to go quiet first,
    and re-time a case they disturbed (more than --quiet-threshold % of the CPUs), keeping the least disturbed
    attempt; a case still disturbed after the retries gets a note on each candidate.
    """
    control = contention_control(args)
    best, attempts = None, 0
    base_notes = {c.name: list(c.notes) for c in timed}
    for attempt in range(args.busy_retries + 1):
        attempts = attempt + 1
        if args.quiet_wait_s > 0:
            common.wait_for_quiet(args.quiet_threshold, args.quiet_wait_s, log)
        for c in timed:
            c.notes = list(base_notes[c.name])
        t0 = common.try_cpu_times()
        samples = common.time_candidates(timed, x, grad, repeats=args.repeats, warmup=args.warmup,
                                         budget_s=args.budget_s)
        busy = common.others_busy_percent(t0, common.try_cpu_times())
        if best is None or busy < best[1]:
            best = (samples, busy, {c.name: list(c.notes) for c in timed})
        if not control or not busy > args.quiet_threshold or attempt == args.busy_retries:
            break
        log(f"  other processes used {busy:.0f}% of the CPUs while timing: re-timing "
            f"(attempt {attempt + 2} of {args.busy_retries + 1})")
    samples, busy, notes = best
    for c in timed:
        c.notes = notes[c.name]
        if control and busy > args.quiet_threshold:
            c.notes.append(f"disturbed: others used {busy:.0f}% of the CPUs")
    return samples, busy, attempts


def case_rows(suite, shape, sparsity, cands, samples, lc, common):
    """One row per candidate × phase, with speedup vs the best dense baseline and vs SparseProp (the faster of
    the suite's SparseProp variants in that phase, where it has several)."""
    stats = {c.name: {p: common.summarize(samples[c.name][p]) for p in common.PHASES} for c in cands if c.name in samples}
    sp_names = [n for n in getattr(lc, "SPARSEPROP_NAMES", (lc.SPARSEPROP,)) if n in stats]
    rows = []
    for c in cands:
        for phase in common.PHASES:
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
            if c.name.startswith("sk_") and sp_names and med == med and med > 0:
                vs_sp = min(stats[n][phase]["median_ms"] for n in sp_names) / med
            rows.append({
                "suite": suite, **shape.row_fields(), "sparsity": sparsity,
                "candidate": c.name, "layout": c.layout, "backend": c.resolved_backend, "nnz": c.nnz,
                "density": c.nnz / shape.weight_numel, "phase": phase, **st,
                "dense_baseline": base_name, "dense_median_ms": base, "speedup_vs_dense": speedup,
                "speedup_vs_dense_min": speedup_min,
                "vs_sparseprop": vs_sp, "check": c.check, "notes": "; ".join(c.notes),
            })
    return rows


CSV_COLUMNS = [
    "timestamp", "suite", "cpu_model", "cpu_isa", "threads", "allocator", "torch_version", "sparsekern_version",
    "sparsekern_commit", "sparsekern_ext", "sparseprop_version", "cpu_busy_start",
    "shape", "in_features", "out_features", "batch", "sparsity", "candidate", "layout", "backend", "nnz",
    "density", "phase", "median_ms", "iqr_ms", "min_ms", "max_ms", "n", "dense_baseline", "dense_median_ms",
    "speedup_vs_dense", "speedup_vs_dense_min", "vs_sparseprop", "check", "notes",
]
# The conv suite: the same columns with the layer's geometry in place of in/out features.
CONV_CSV_COLUMNS = (CSV_COLUMNS[:CSV_COLUMNS.index("in_features")]
                    + ["group", "layer", "c_in", "c_out", "kernel", "stride", "padding", "groups", "height", "width",
                       "out_height", "out_width", "batch", "bias"]
                    + CSV_COLUMNS[CSV_COLUMNS.index("sparsity"):-2] + ["others_busy_pct", "attempts"]
                    + CSV_COLUMNS[-2:])


def conv_latest_name(shapes_arg: str) -> str | None:
    """The stable file name of a full conv run: ``conv_cpu_latest`` for the default (ResNet-18) shapes,
    ``conv_cpu_<groups>_latest`` for other named groups, none for hand-written layers (timestamped file only)."""
    items = [s.strip().lower().replace("-", "") for s in shapes_arg.split(",") if s.strip()]
    if items == [CONV_SHAPES]:
        return "conv_cpu_latest"
    if items and all(i in ("resnet18", "vgg16", "mobilenetv2") for i in items):
        return "conv_cpu_" + "_".join(items) + "_latest"
    return None


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
        out.append(detail_table(idx, shape, args.sparsity_list, present, has_sp, lc, common) + "\n")
    return "\n".join(out)


def detail_table(idx, shape, sparsities, present, has_sp, lc, common) -> str:
    """One shape's rows: every sparsity × candidate with its fwd / bwd / f+b medians and speedups."""
    headers = ["sparsity", "candidate", "backend", "fwd ms", "bwd ms", "f+b ms", "f+b IQR", "n",
               "speedup fwd", "speedup bwd", "speedup f+b"]
    if has_sp:
        headers.append("vs SparseProp f+b")
    headers += ["check", "notes"]
    body = []
    for s in sparsities:
        for n in present:
            ph = {p: idx.get((shape.spec, s, n, p)) for p in common.PHASES}
            if ph["fwd"] is None:
                continue
            line = [f"{s:g}", n, ph["fwd"]["backend"]]
            line += [common.fmt_ms(ph[p]["median_ms"]) for p in common.PHASES]
            line += [common.fmt_ms(ph["fwd+bwd"]["iqr_ms"]), ph["fwd+bwd"]["n"]]
            line += [common.fmt_ratio(ph[p]["speedup_vs_dense"]) for p in common.PHASES]
            if has_sp:
                line.append(common.fmt_ratio(ph["fwd+bwd"]["vs_sparseprop"]))
            line += [ph["fwd"]["check"], ph["fwd"]["notes"]]
            body.append(line)
    return common.markdown_table(headers, body, align="ll" + "l" + "r" * (len(headers) - 5) + "ll")


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


# ------------------------------------------------------------------------------------------ conv tables
def _layer_cell(shape) -> str:
    return shape.title


def _conv_table(common, headers, body) -> str:
    """A conv table: layer and shape columns left-aligned, the rest right-aligned."""
    return common.markdown_table(headers, body, "ll" + "r" * (len(headers) - 2))


def _conv_matrix(shapes, sparsities, cell, extra=None) -> list[list]:
    """Rows of a layer × sparsity table: ``cell(shape, sparsity)`` per sparsity, ``extra(shape)`` columns first."""
    body = []
    for sh in shapes:
        line = [_layer_cell(sh), sh.geometry] + (extra(sh) if extra else [])
        body.append(line + [cell(sh, s) for s in sparsities])
    return body


def conv_tables(rows, shapes, names, args, cc, common) -> str:
    """Targets, layer × sparsity speedup matrices, the sparse/dense crossover and per-layer detail tables."""
    idx = _index(rows)
    sps = args.sparsity_list
    present = [n for n in names if any(r["candidate"] == n for r in rows)]
    sp_present = [n for n in cc.SPARSEPROP_NAMES if n in present]
    dense_names = [n for n in (cc.DENSE, cc.DENSE_COMPILED) if n in present]
    nan = float("nan")

    def val(sh, s, n, key="speedup_vs_dense", phase="fwd+bwd"):
        r = idx.get((sh.spec, s, n, phase))
        v = r[key] if r else nan
        return v if isinstance(v, (int, float)) else nan

    def best_sp(sh, s, phase="fwd+bwd"):
        """(median ms, name) of the faster SparseProp variant in this phase, or (nan, '')."""
        meds = [(val(sh, s, n, "median_ms", phase), n) for n in sp_present]
        meds = [m for m in meds if m[0] == m[0]]
        return min(meds) if meds else (nan, "")

    def dense_ms(sh, s, phase="fwd+bwd"):
        r = idx.get((sh.spec, s, dense_names[0] if dense_names else cc.DENSE, phase))
        return r["dense_median_ms"] if r else nan

    def dense_col(sh):
        vals = sorted(v for v in (dense_ms(sh, s) for s in sps) if v == v)
        return [common.fmt_ms(common.quantile(vals, 0.5)) if vals else "n/a"]

    out = []
    base_hdr = ["layer", "shape"]
    sp_hdr = [f"{s:g}" for s in sps]
    has_sk = cc.SK_CSR in present

    # -- targets
    target_shapes = [sh for sh in shapes if sh.group == "resnet18" and sh.kernel == 3]
    target_sps = [s for s in sps if s in CONV_DENSE_TARGETS]
    if has_sk and target_shapes and target_sps:
        out.append("## Targets: CIFAR ResNet-18 3×3 layers\n")
        out.append("sparsekern `backend='sparse'` forward+backward vs dense (target ≥ "
                   + ", ".join(f"{t:g}× at {s:g}" for s, t in CONV_DENSE_TARGETS.items())
                   + f") and vs SparseProp (the faster of its kernels; target ≥ {CONV_SPARSEPROP_TARGET:g}×):\n")
        body, met_d, met_s, n_d, n_s = [], 0, 0, 0, 0
        for sh in target_shapes:
            for s in target_sps:
                sk_ms, spd = val(sh, s, cc.SK_CSR, "median_ms"), val(sh, s, cc.SK_CSR)
                sp_ms, sp_name = best_sp(sh, s)
                vs_sp = val(sh, s, cc.SK_CSR, "vs_sparseprop")
                t = CONV_DENSE_TARGETS[s]
                ok_d = spd == spd and spd >= t
                n_d += spd == spd
                met_d += ok_d
                ok_s = vs_sp == vs_sp and vs_sp >= CONV_SPARSEPROP_TARGET
                n_s += vs_sp == vs_sp
                met_s += ok_s
                body.append([_layer_cell(sh), sh.geometry, f"{s:g}", common.fmt_ms(dense_ms(sh, s)),
                             common.fmt_ms(sk_ms),
                             f"{common.fmt_ratio(spd)} {'met' if ok_d else '**missed**'} (≥{t:g}×)",
                             f"{common.fmt_ms(sp_ms)} ({sp_name or 'n/a'})",
                             f"{common.fmt_ratio(vs_sp)} {'met' if ok_s else '**missed**'}" if vs_sp == vs_sp else "–"])
        out.append(common.markdown_table(
            base_hdr + ["sparsity", "dense f+b ms", "sk_csr f+b ms", "vs dense", "SparseProp f+b ms (kernel)",
                        "vs SparseProp"], body, "llrrrrlr") + "\n")
        out.append(f"Met: vs dense {met_d}/{n_d} cells, vs SparseProp {met_s}/{n_s} cells.\n")

    # -- backend="auto"
    if cc.SK_CSR_AUTO in present:
        below, worst = [], None
        for sh in shapes:
            for s in sps:
                r = val(sh, s, cc.SK_CSR_AUTO)
                if r != r:
                    continue
                backend = idx[(sh.spec, s, cc.SK_CSR_AUTO, "fwd+bwd")]["backend"]
                if worst is None or r < worst[0]:
                    worst = (r, sh, s, backend)
                if r < AUTO_TARGET:
                    below.append(f"{_layer_cell(sh)} ({sh.geometry}) at {s:g}: {r:.2f}× (auto→{backend})")
        if worst is not None:
            out.append(f"backend='auto' target (never slower than {AUTO_TARGET}× dense, forward+backward): "
                       f"{'MET' if not below else 'MISSED'}; worst {worst[0]:.2f}× at {_layer_cell(worst[1])} "
                       f"({worst[1].geometry}), sparsity {worst[2]:g} (auto→{worst[3]})"
                       + ("" if not below else f"; below target in {len(below)} cells:\n\n"
                          + "\n".join(f"- {b}" for b in below)) + "\n")

    # -- layer × sparsity matrices
    out.append("## Speedups, layer × sparsity (forward+backward unless said otherwise)\n")
    if has_sk:
        out.append("sparsekern `backend='sparse'` (sk_csr) vs dense (dense median / sk_csr median; > 1 = faster):\n")
        out.append(_conv_table(common, base_hdr + ["dense f+b ms"] + sp_hdr, _conv_matrix(
            shapes, sps, lambda sh, s: common.fmt_ratio(val(sh, s, cc.SK_CSR)), dense_col)) + "\n")
        out.append("sk_csr vs dense, forward / backward separately:\n")
        out.append(_conv_table(common, base_hdr + sp_hdr, _conv_matrix(
            shapes, sps, lambda sh, s: f"{common.fmt_ratio(val(sh, s, cc.SK_CSR, phase='fwd'))} / "
                                       f"{common.fmt_ratio(val(sh, s, cc.SK_CSR, phase='bwd'))}")) + "\n")
    if has_sk and sp_present:
        out.append("sk_csr vs SparseProp (the faster of " + ", ".join(f"`{n}`" for n in sp_present)
                   + " in each phase / sk_csr; > 1 = sparsekern faster; – = SparseProp cannot run the layer):\n")
        out.append(_conv_table(common, base_hdr + sp_hdr, _conv_matrix(
            shapes, sps, lambda sh, s: common.fmt_ratio(val(sh, s, cc.SK_CSR, "vs_sparseprop")))) + "\n")
    if sp_present:
        def sp_cell(sh, s):
            ms, name = best_sp(sh, s)
            d = dense_ms(sh, s)
            return common.fmt_ratio(d / ms) if ms == ms and d == d else "–"
        out.append("SparseProp (faster kernel) vs dense, for reference:\n")
        out.append(_conv_table(common, base_hdr + sp_hdr, _conv_matrix(shapes, sps, sp_cell)) + "\n")
    if cc.SK_CSR_AUTO in present:
        def auto_cell(sh, s):
            r = val(sh, s, cc.SK_CSR_AUTO)
            if r != r:
                return "–"
            cell = f"{common.fmt_ratio(r)} {idx[(sh.spec, s, cc.SK_CSR_AUTO, 'fwd+bwd')]['backend']}"
            return f"**{cell}**" if r < AUTO_TARGET else cell
        out.append(f"sparsekern `backend='auto'` (sk_csr_auto) vs dense, and what auto chose (bold: below "
                   f"{AUTO_TARGET}×):\n")
        out.append(_conv_table(common, base_hdr + sp_hdr, _conv_matrix(shapes, sps, auto_cell)) + "\n")

    # -- crossover of backend="sparse"
    if has_sk:
        body, stays = [], []
        for sh in shapes:
            series = [(s, val(sh, s, cc.SK_CSR)) for s in sorted(sps)]
            series = [(s, r) for s, r in series if r == r]
            first = next((s for s, r in series if r >= 1.0), None)
            stable = next((s for i, (s, _) in enumerate(series) if all(r >= 1.0 for _, r in series[i:])), None)
            stays.append(stable)
            body.append([_layer_cell(sh), sh.geometry, "never" if first is None else f"{first:g}",
                         "never" if stable is None else f"{stable:g}"])
        out.append("Where sk_csr (backend='sparse') is at least as fast as dense, forward+backward (over the "
                   "sparsities measured):\n")
        out.append(_conv_table(common, base_hdr + ["first sparsity ≥ dense", "stays ≥ dense from"], body) + "\n")
        safe = None if any(v is None for v in stays) else max(stays)
        out.append("Threshold for backend='auto' safe on every layer measured (max of 'stays ≥ dense from'): "
                   + ("none (sparse never stays ahead on some layer)" if safe is None else f"{safe:g}")
                   + " (compare `CONV_MIN_SPARSITY` in sparsekern/nn/backend.py, per CPU profile and kind of conv).\n")

    # -- per layer
    out.append("## Per layer\n")
    has_sp_col = bool(sp_present) and has_sk
    for sh in shapes:
        g = f", groups={sh.groups}" if sh.groups > 1 else ""
        out.append(f"### {sh.label}  (nn.Conv2d({sh.c_in}, {sh.c_out}, {sh.kernel}, stride={sh.stride}, "
                   f"padding={sh.padding}{g}, bias={sh.bias}), input ({sh.batch}, {sh.c_in}, {sh.height}, "
                   f"{sh.width}))\n")
        out.append(detail_table(idx, sh, sps, present, has_sp_col, cc, common) + "\n")
    return "\n".join(out)


def conv_candidate_section(names, skipped, shapes, cc) -> str:
    """Each candidate, and where it was not timed (SparseProp has no depthwise convolution, ...)."""
    lines = []
    for n in names:
        where = skipped.get(n, {})
        if len(where) == len(shapes):
            reasons = sorted(set(where.values()))
            lines.append(f"- `{n}`: NOT TIMED: {'; '.join(reasons)}")
            continue
        line = f"- `{n}`: {cc.describe(n)}"
        if where:
            by_reason = {}
            for spec, why in where.items():
                by_reason.setdefault(why, []).append(spec)
            line += "; not timed on " + "; ".join(f"{', '.join(specs)} ({why})" for why, specs in by_reason.items())
        lines.append(line)
    return "\n".join(lines)


CONV_METHOD = (
    "Each step: `x` (B, C_in, H, W) contiguous with requires_grad, `y = layer(x)` with autograd on (timed as "
    "fwd), then `y.backward(grad)` with a fixed contiguous (B, C_out, OH, OW) grad (timed as bwd: input, weight "
    "and bias gradients); fwd+bwd is the span of both in the same step. Gradients are reset to None before each "
    "step (untimed). Candidates are interleaved, one step each per round in a shuffled order (seeded), so drift "
    "on a shared machine and the cache state a step leaves behind hit all of them alike; dense is re-timed for "
    "every layer × sparsity. All candidates hold the same weights, the sparse ones pruned by the same random "
    "unstructured mask (exactly round((1 − sparsity)·numel) kept weights). "
    "Times are medians over the repeats (IQR = interquartile range). speedup = dense median / candidate median "
    "(> 1: faster than dense); vs SparseProp = the faster SparseProp kernel's median in that phase / sparsekern "
    "median (> 1: sparsekern faster). Before timing, every candidate's y, dx, dW (kept positions) and db are "
    "checked against F.conv2d and its autograd in float64 on the same masked weights (check column: worst "
    "relative error; > 1e-3 fails, and a failed candidate is not timed). Compare ratios, not absolute times."
)


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
    if not args.no_keep_freed_memory:
        from sparsekern.allocator import keep_freed_memory
        keep_freed_memory()

    import torch
    torch.set_num_threads(args.threads)
    from . import common
    if args.suite == "conv":
        from . import conv_cases as lc
    else:
        from . import linear_cases as lc

    if args.suite == "conv":
        layouts = [None]
        try:
            shapes = lc.parse_shapes(args.shapes, args.batch)
        except ValueError as exc:
            log(str(exc))
            return 2
    else:
        layouts = lc.parse_layouts(args.block_sizes)
        shapes = lc.parse_shapes(args.shapes)
    sk = lc.sparsekern_names(layouts, auto=True) if args.suite != "conv" else [lc.SK_CSR, lc.SK_CSR_AUTO]
    if args.candidates:
        names = [n.strip() for n in args.candidates.split(",") if n.strip()]
    elif args.suite == "conv":
        names = list(lc.DEFAULT_CANDIDATES)
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
    check = lc.check_candidate if args.suite == "conv" else lc.check_case
    rows, skipped = run_cases(args, names, layouts, lc, common, shapes, check)
    env["cpu_busy_end"] = common.cpu_busy_percent()
    busy = busy or busy_warning(env["cpu_busy_end"], "after the run")
    elapsed = time.perf_counter() - t_start
    for r in rows:
        r.update({k: env[k] for k in CSV_COLUMNS if k in env})
    extra_env = {}
    if args.suite == "conv":
        extra_env["Batch"] = f"{args.batch} (named groups; a layer's bB overrides)"
    if contention_control(args):
        cases = {(r["shape"], r["sparsity"]): (r["others_busy_pct"], r["attempts"]) for r in rows}
        vals = [b for b, _ in cases.values() if b == b]
        disturbed = [k for k, (b, _) in cases.items() if b > args.quiet_threshold]
        retimed = sum(1 for _, a in cases.values() if a > 1)
        extra_env["Contention control"] = (
            f"before each case, waited up to {args.quiet_wait_s:g} s for other processes to use ≤ "
            f"{args.quiet_threshold:g}% of the CPUs; a case they disturbed more while it was timed was re-timed "
            f"(up to {args.busy_retries}×, least disturbed attempt kept). Others' share while timing: max "
            f"{max(vals, default=float('nan')):.1f}%, median {common.quantile(sorted(vals), 0.5):.1f}% over "
            f"{len(cases)} cases; re-timed: {retimed}; still disturbed: {len(disturbed)}")
        if disturbed:
            busy = (f"{len(disturbed)} of {len(cases)} cases were timed while other processes used more than "
                    f"{args.quiet_threshold:g}% of the CPUs (notes 'disturbed', CSV others_busy_pct): their "
                    "times are inflated; re-run them (--shapes … --sparsities …) on a quiet machine")
        else:
            busy = ""  # every case verified quiet while timed: the idle-time samples around the run do not matter

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    extra = {"Shapes": ", ".join(f"{s.label}" for s in shapes),
             "Sparsities": ", ".join(f"{s:g}" for s in args.sparsity_list),
             "Repeats / warmup": f"{args.repeats} / {args.warmup} per candidate per case "
                                 f"(budget {args.budget_s:g} s per candidate per case)",
             "Wall time": f"{elapsed:.0f} s", **extra_env}
    if busy:
        extra["NOISE WARNING"] = busy

    method, candidates = METHOD, None
    if args.suite == "linear":
        tables = linear_tables(rows, shapes, names, args, lc, common)
        title = "Linear layer benchmark (CPU)"
        base = "linear_cpu_quick" if args.quick else f"linear_cpu_{stamp}"
        latest = None if args.quick else "linear_cpu_latest"
    elif args.suite == "conv":
        tables = conv_tables(rows, shapes, names, args, lc, common)
        title = "Conv2d layer benchmark (CPU)"
        method = CONV_METHOD
        candidates = conv_candidate_section(names, skipped, shapes, lc)
        base = "conv_cpu_quick" if args.quick else f"conv_cpu_{stamp}"
        latest = None if args.quick else conv_latest_name(args.shapes)
    else:
        tables, _ = crossover_tables(rows, shapes, layouts, args, lc, common)
        title = "Dense vs sparse crossover (CPU)"
        base = "crossover_cpu_quick" if args.quick else "crossover_cpu"
        latest = None

    if candidates is None:
        candidates = candidate_section(names, {n: next(iter(w.values())) for n, w in skipped.items()}, lc)
    md = "\n".join([f"# {title}\n", common.machine_section(env, extra), "",
                    "## Candidates\n", candidates, "",
                    "## Method\n", method, "", "## Results\n", tables])
    print(tables)
    written = []
    columns = CONV_CSV_COLUMNS if args.suite == "conv" else CSV_COLUMNS
    for stem in filter(None, (base, latest)):
        common.write_csv(out_dir / f"{stem}.csv", rows, columns)
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
