"""Op-level A/B timings behind the kernel design choices: each pair computes the same result two ways, timed
interleaved in one run, reported as medians and the ratio old way / sparsekern's way.

    python -m benchmarks.ops                 # 2048x2048, batch 256, 90 and 98 % sparsity, 2 threads

Pairs:
- backward: a CSR layer's input and weight gradients by two kernels (csr_spmm_bt over Wᵀ, then csr_sddmm)
  vs one pass (csr_spmm_sddmm_bt);
- values into CSC order: torch index_select vs sparsekern permute;
- BSR values into block order: element gather (permute by from_elements) vs whole runs of bw;
- layer-boundary transpose: torch .t().contiguous() vs sparsekern transpose;
- the dense fallback's refill and gather: boolean-mask indexing (dense[mask] = values, dense[mask]) vs
  sparsekern mask_expand_ / mask_compress.
Writes benchmarks/results/ops_cpu.md and .csv (machine, versions, command, date).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from .run import log, set_thread_env

MODULE = "benchmarks.ops"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=2048, help="weight is SIZE x SIZE (default 2048)")
    p.add_argument("--batch", type=int, default=256, help="batch (default 256)")
    p.add_argument("--sparsities", default="0.9,0.98", help="comma-separated (default 0.9,0.98)")
    p.add_argument("--threads", type=int, default=2, help="threads (default 2)")
    p.add_argument("--repeats", type=int, default=31, help="timed calls per way, interleaved (default 31)")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/results)")
    return p.parse_args(argv)


def pairs(torch, _ops, size, batch, sparsity):
    """(name, old way, sparsekern's way) closures over fresh data for one sparsity."""
    from sparsekern.layout import BSRLayout, CSRLayout
    from sparsekern.masks import random_mask

    gen = torch.Generator().manual_seed(0)
    mask = random_mask((size, size), sparsity, generator=gen)
    lt = CSRLayout.from_mask(mask).tensors()
    tl = (lt[2], lt[3], lt[0], lt[1], lt[5], lt[4])  # Wᵀ
    values = torch.randn(int(mask.sum()))
    values_t = _ops.permute(values, lt[4], lt[5])
    grad_t, xt = torch.randn(size, batch), torch.randn(size, batch)

    block = BSRLayout.from_mask(random_mask((size, size), sparsity, generator=gen, block_size=16), 16)
    from_elements = block.from_elements
    to_elements = torch.argsort(from_elements)
    from_runs = from_elements.view(-1, 16)[:, 0] // 16
    to_runs = torch.argsort(from_runs)
    block_values = torch.randn(block.nnz)
    x = torch.randn(batch, size)
    dense = torch.zeros(size, size)

    def masked_assign():
        dense[mask] = values

    return [
        ("CSR backward: spmm_bt + sddmm -> fused csr_spmm_sddmm_bt",
         lambda: (_ops.csr_spmm_bt(values_t, *tl, grad_t, None), _ops.csr_sddmm(grad_t, xt, *lt)),
         lambda: _ops.csr_spmm_sddmm_bt(values_t, *tl, grad_t, xt)),
        ("values into CSC order: index_select -> permute",
         lambda: values.index_select(0, lt[4]),
         lambda: _ops.permute(values, lt[4], lt[5])),
        ("BSR values into block order: element gather -> runs of 16",
         lambda: _ops.permute(block_values, from_elements, to_elements),
         lambda: _ops.permute(block_values.view(-1, 16), from_runs, to_runs)),
        (f"transpose ({batch}, {size}): .t().contiguous() -> sparsekern transpose",
         lambda: x.t().contiguous(),
         lambda: _ops.transpose(x)),
        ("dense fallback refill: dense[mask] = values -> mask_expand_",
         masked_assign,
         lambda: _ops.mask_expand_(values, lt[0], mask, dense)),
        ("dense fallback gather: dense[mask] -> mask_compress",
         lambda: dense[mask],
         lambda: _ops.mask_compress(dense, lt[0], mask)),
    ]


def time_pair(old, new, repeats):
    for f in (old, new, old, new):  # warm-up
        f()
    ways, samples = (old, new), ([], [])
    for i in range(repeats):
        for k in ((0, 1) if i % 2 == 0 else (1, 0)):  # alternate which way goes first
            t = time.perf_counter_ns()
            ways[k]()
            samples[k].append(time.perf_counter_ns() - t)
    return samples


def main(argv=None) -> int:
    args = parse_args(argv)
    set_thread_env(args.threads)
    import torch
    torch.set_num_threads(args.threads)
    from sparsekern import _ops
    from . import common

    env = common.environment(args.threads)
    rows = []
    for sparsity in [float(s) for s in args.sparsities.split(",")]:
        for name, old, new in pairs(torch, _ops, args.size, args.batch, sparsity):
            log(f"{name} at {sparsity}")
            s_old, s_new = (common.summarize(s) for s in time_pair(old, new, args.repeats))
            rows.append({"timestamp": env["timestamp"], "cpu_model": env["cpu_model"], "threads": args.threads,
                         "torch_version": env["torch_version"], "sparsekern_commit": env["sparsekern_commit"],
                         "size": args.size, "batch": args.batch, "sparsity": sparsity, "pair": name,
                         "old_median_ms": s_old["median_ms"], "old_iqr_ms": s_old["iqr_ms"],
                         "new_median_ms": s_new["median_ms"], "new_iqr_ms": s_new["iqr_ms"], "n": s_new["n"],
                         "ratio": s_old["median_ms"] / s_new["median_ms"]})
    env["cpu_busy_end"] = common.cpu_busy_percent()

    out = Path(args.out) if args.out else common.REPO_ROOT / "benchmarks" / "results"
    common.write_csv(out / "ops_cpu.csv", rows, list(rows[0]))
    table = common.markdown_table(
        ["sparsity", "pair", "old ms", "new ms", "old / new"],
        [[r["sparsity"], r["pair"], common.fmt_ms(r["old_median_ms"]), common.fmt_ms(r["new_median_ms"]),
          common.fmt_ratio(r["ratio"])] for r in rows], "rlrrr")
    (out / "ops_cpu.md").write_text(
        f"# Op-level A/B timings (CPU)\n\n{common.machine_section(env, module=MODULE)}\n- **Weight**: "
        f"{args.size}x{args.size}, batch {args.batch}, float32; medians of {args.repeats} interleaved calls "
        f"per way\n\n{table}\n")
    log(f"wrote {out / 'ops_cpu.md'}, {out / 'ops_cpu.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
