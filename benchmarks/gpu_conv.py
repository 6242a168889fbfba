"""GPU Conv2d benchmark: dense cuDNN (eager and torch.compile) and sparsekern.SparseConv2d, timed side by side.

    python -m benchmarks.gpu_conv                    # the GPU issue's grid (a CUDA GPU, about an hour)
    python -m benchmarks.gpu_conv --quick            # tiny shapes, a smoke test (CPU or GPU, seconds; on a
                                                     # CPU without dense_compiled)
    python -m benchmarks.gpu_conv --shapes resnet18:layer1,resnet18:layer3 --layouts 32,64,csr \\
        --dtypes bfloat16 --sparsities 0.9,0.95,0.99

One case is (shape, dtype, layout, sparsity); its candidates hold the same weights, pruned by the same mask,
and are checked and timed exactly as ``benchmarks.gpu_linear`` does it (its machinery, imported): a training
step ``y = layer(x)`` (fwd), then ``y.backward(grad)`` (bwd: input, weight and bias gradients); CUDA events,
a synchronize after every step, candidates interleaved one step each per round in a shuffled order, medians.
Before timing, every candidate's y, dx, dW (kept positions) and db are checked against ``F.conv2d`` in
float64 on the same device (``benchmarks.conv_cases.reference``); a candidate that fails is reported, not
timed. Tolerance per dtype as gpu_linear (max|err| / max|ref|: float32 1e-3, bfloat16 3e-2).

Shapes (``--shapes``, batch ``--batch``, default 128): the 3x3 convs of the CIFAR ResNet-18 (64→64 @32x32,
128→128 @16x16, 256→256 @8x8, 512→512 @4x4 and the stride-2 transitions 64→128, 128→256, 256→512) and of the
CIFAR VGG16 at its 32x32 input resolution (kuangliu/pytorch-cifar's cfg; benchmarks.conv_cases lists both).
A layer whose geometry an earlier one already has is timed once (VGG16 conv1_2, conv2_2, conv3_2 and
conv4_2 are ResNet-18's layer1-4 convs plus a bias), which leaves VGG16's conv1_1 (3→64), conv2_1, conv3_1,
conv4_1 and conv5_x. ``GROUP:LAYER`` picks layers by the first word of their name (``resnet18:layer1``,
``resnet18:layer2.0.conv1``, ``vgg16:conv3_1``); a spec like ``64x128k3s2p1@32`` gives any other layer.

Layouts: ``csr``, an unstructured random mask (SparseConv2d(..., mask); on CUDA the three convolution GEMMs
are lowered by im2col onto the CUDA C++ CSR kernels, sparsekern/conv_im2col.py), and square block sizes
``b`` (16, 32, 64, 128): whole blocks of b output × b input channels at each kernel tap, a random mask over
the block grid of the tap-major weight view (C_out, kH·kW·C_in) (SparseConv2d(..., mask, block_size=(b, b));
on CUDA the Triton implicit-GEMM kernels, sparsekern/triton/bsr_conv2d.py). A block size that does not
divide a layer's channels (128 on a 64-channel layer, any on VGG16's 3-channel conv1_1) is skipped, with a
note. On a CPU (--quick) both layouts run the CSR conv kernels: a smoke test of this script, not a measurement.

Candidates:
    dense            nn.Conv2d in the case's dtype (cuDNN, torch.backends.cudnn.benchmark on: the fastest
                     algorithm per shape, searched in the untimed first steps), all weights
    dense_compiled   torch.compile(nn.Conv2d) (--no-compile leaves it out)
    sk               sparsekern.SparseConv2d.from_dense(..., backend="sparse")
    sk_auto          the same with backend="auto" (the notes say what it ran)
torch.sparse has no sparse convolution (F.conv2d takes strided weights only), so there is no torch_sparse
candidate here.

Memory format: NCHW (contiguous) for every candidate by default: PyTorch's default and what sparsekern's
models and trainer feed, and the sparse kernels' native output (they read any strides but write NCHW, so
under channels_last every SparseConv2d output is converted, a copy that would be measured with the kernels).
cuDNN's 16-bit tensor-core kernels prefer channels_last, so dense may be faster there:
``--channels-last`` runs every candidate (inputs, gradients, dense weights) in channels_last instead.

Reported (CSV + markdown under --out, rewritten after every case, so a stopped run keeps what it measured):
the machine and versions, the command, every median and its ratio to dense, and per layout the sk
break-even sparsity against dense per shape (where sk's forward+backward median first beats the faster of
dense and dense_compiled, interpolated between measured sparsities as gpu_linear does) and sk's speedup at
90 % and 95 %.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

import sparsekern
from sparsekern import _extension
from sparsekern.masks import random_mask

from .common import Deadline, compare_to_reference, fmt_ratio, markdown_table
from .conv_cases import SHAPE_GROUPS, group_shapes, make_inputs, parse_shapes, reference
from .gpu_linear import CHECK_RTOL, PHASES, GpuCandidate, add_grid_args, break_even, dtype_name, environment, finish, \
    layout_key, measure_case, report_head, resolve_grid_args, rows_table, save, set_precision, speedup_table, step, why

SHAPES = "resnet18,vgg16"
QUICK_SHAPES = "16x32k3s1p1@8"
BATCH, QUICK_BATCH = 128, 2
SPARSITIES = "0.5,0.7,0.8,0.9,0.95,0.98,0.99"
QUICK_SPARSITIES = "0.5,0.9"
LAYOUTS = "csr,16,32,64,128"
QUICK_LAYOUTS = "csr,16"
SUMMARY_SPARSITIES = (0.9, 0.95)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_conv", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=None,
                   help=f"comma-separated: a group ({', '.join(SHAPE_GROUPS)}: its 3x3 convs), GROUP:LAYER (the "
                        "group's layers whose name starts with the word LAYER, e.g. resnet18:layer1, "
                        "resnet18:layer2.0.conv1, vgg16:conv3_1) or a layer spec CINxCOUTkKsSpP[gG]@H[xW][bB] "
                        f"(e.g. 64x128k3s2p1@32; bias on). Default {SHAPES}, --quick {QUICK_SHAPES}")
    p.add_argument("--batch", type=int, default=None, help=f"batch (default {BATCH}, --quick {QUICK_BATCH})")
    p.add_argument("--channels-last", action="store_true",
                   help="run every candidate in channels_last (inputs, gradients, dense weights); default NCHW")
    add_grid_args(p, SPARSITIES, LAYOUTS, QUICK_LAYOUTS, "conv_gpu")
    args = p.parse_args(argv)
    args.batch = args.batch or (QUICK_BATCH if args.quick else BATCH)
    try:
        args.shapes = select_shapes(args.shapes or (QUICK_SHAPES if args.quick else SHAPES), args.batch)
    except ValueError as exc:
        p.error(str(exc))
    resolve_grid_args(p, args, SPARSITIES, QUICK_SPARSITIES, LAYOUTS, QUICK_LAYOUTS, "conv_gpu")
    args.compile_note = ""
    if args.quick and args.device.type == "cpu" and not args.no_compile:
        # Inductor's C++ compile of the conv would take most of a CPU smoke run; on a GPU --quick keeps it.
        args.no_compile = True
        args.compile_note = "left out: --quick on a CPU"
    return args


def select_shapes(spec: str, batch: int):
    """``[(ConvShape, [titles of later layers with the same geometry]), ...]`` in the order given, each
    geometry once."""
    shapes = []
    for item in (s.strip() for s in spec.split(",")):
        group, _, layer = item.partition(":")
        key = group.lower().replace("-", "")
        if key not in SHAPE_GROUPS:
            shapes += parse_shapes(item, batch)  # raises ValueError naming the accepted forms
            continue
        members = group_shapes(key, batch)
        picked = [s for s in members if s.name.split()[0] == layer] if layer else [s for s in members if s.kernel == 3]
        if not picked:
            names = ", ".join(dict.fromkeys(s.name.split()[0] for s in members))
            raise ValueError(f"--shapes: {group} has no layer {layer!r} (its layers: {names})")
        shapes += picked
    distinct = {}
    for s in shapes:
        geometry = (s.c_in, s.c_out, s.height, s.width, s.kernel, s.stride, s.padding, s.groups, s.batch)
        if geometry in distinct:
            distinct[geometry][1].append(s.title)
        else:
            distinct[geometry] = (s, [])
    return list(distinct.values())


# ---------------------------------------------------------------------------------------------- masks
def block_unsupported(shape, layout: str) -> str:
    """Why square blocks of ``layout`` cannot tile this layer's weight ('' if they can, or for csr)."""
    if layout == "csr":
        return ""
    b = int(layout)
    c_out, group_in = shape.weight_shape[:2]
    bad = [f"{n} {side}" for n, side in ((c_out // shape.groups, "output"), (group_in, "input")) if n % b]
    return f"block {b} does not divide the {' and '.join(bad)} channels" if bad else ""


def units(shape, layout: str, kept: int) -> str:
    """How many of the mask's units (weights, or b x b blocks of the tap-major view) are kept."""
    c_out, group_in, kh, kw = shape.weight_shape
    if layout == "csr":
        return f"{kept} of {c_out * group_in * kh * kw} weights kept"
    b = int(layout)
    return f"{kept // (b * b)} of {(c_out // b) * (kh * kw * group_in // b)} blocks of {b}x{b} kept"


def conv_mask(shape, layout: str, sparsity: float, seed: int = 0) -> torch.Tensor:
    """A random mask of the weight's shape (C_out, C_in/groups, kH, kW): unstructured for csr, else a random
    mask over the (b x b) block grid of the tap-major view (C_out, kH·kW·C_in/groups), as SparseConv2d's
    block_size takes it (whole blocks of b output × b input channels at one kernel tap)."""
    gen = torch.Generator().manual_seed(seed + 1)
    if layout == "csr":
        return random_mask(shape.weight_shape, sparsity, generator=gen)
    b = int(layout)
    c_out, group_in, kh, kw = shape.weight_shape
    tap_major = random_mask((c_out, kh * kw * group_in), sparsity, generator=gen, block_size=(b, b))
    return tap_major.view(c_out, kh, kw, group_in).permute(0, 3, 1, 2).contiguous()


# ------------------------------------------------------------------------------------------ candidates
def _sparsekern(name, dense, mask, block, backend, shape, device):
    layer = sparsekern.SparseConv2d.from_dense(dense, mask, block_size=block, backend=backend)
    resolved = layer.resolved_backend(device.type, (shape.height, shape.width))
    if resolved == "dense":
        path = "dense fallback (cuDNN/oneDNN)"
    elif not _extension.has_compiled_kernels(device.type, layer.layout_kind):
        path = "no compiled kernel: the pure-PyTorch reference"
    elif layer._runs_block_kernels(device.type):  # the module's own rule: block masks on CUDA
        path = "Triton bsr_conv2d"
    else:
        path = "CUDA C++ csr_conv2d (im2col)" if device.type == "cuda" else "CPU csr_conv2d kernels"
    note = f"auto→{resolved}: {path}" if backend == "auto" else path
    return GpuCandidate(name, layer, [layer.weight_values, layer.bias], lambda: layer.weight_values.grad,
                        layer.bias, mask, note=note)


def build_case(dense, compiled, shape, layout, mask, device):
    """The candidates of one case and the ones that could not be built (name -> why)."""
    block = None if layout == "csr" else (int(layout), int(layout))
    params = [dense.weight, dense.bias]  # bias None for ResNet's convs (gpu_linear's step skips it)
    cands = [GpuCandidate("dense", dense, params, lambda: dense.weight.grad, dense.bias, None)]
    if compiled is not None:
        cands.append(GpuCandidate("dense_compiled", compiled, params, lambda: dense.weight.grad, dense.bias, None))
    skipped = {}
    for name, backend in (("sk", "sparse"), ("sk_auto", "auto")):
        try:
            cands.append(_sparsekern(name, dense, mask, block, backend, shape, device))
        except Exception as exc:  # noqa: BLE001  (record why, time the others)
            skipped[name] = why(exc)
    return cands, skipped


def check(c, dense, x, grad, dtype, device, dense_ref: dict, case_ref: dict) -> str:
    """y, dx, dW (kept positions; all of them for dense) and db against F.conv2d in float64, within this dtype's
    tolerance. The float64 references are computed once: the dense one per shape (``dense_ref``), the masked
    one per case (``case_ref``, for the sparse candidates that share the mask)."""
    y, _ = step(c, x, grad, device)
    cache = dense_ref if c.mask is None else case_ref
    if "ref" not in cache:
        cache["ref"] = reference(dense, c.mask, x, grad)
    ref = cache["ref"]
    got = {"y": y, "dx": x.grad, "dW": c.weight_grad()}
    if "db" in ref:
        got["db"] = None if c.bias is None else c.bias.grad
    with torch.no_grad():
        return compare_to_reference(got, ref, rtol=CHECK_RTOL[dtype])


def setup(shape, dtype, args):
    """The dense layer (and its compiled twin), x and the output gradient of one shape in one dtype."""
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    torch.manual_seed(0)
    dense = shape.module().to(device=args.device, dtype=dtype, memory_format=fmt)
    compiled = None
    if not args.no_compile:
        from torch import _dynamo
        _dynamo.reset()  # one compiled conv at a time: no recompile limit reached over many shapes
        compiled = torch.compile(dense, dynamic=False)
    x, grad = make_inputs(shape)
    x = x.detach().to(device=args.device, dtype=dtype, memory_format=fmt).requires_grad_(True)
    grad = grad.to(device=args.device, dtype=dtype, memory_format=fmt)
    return dense, compiled, x, grad


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    set_precision(args)
    torch.backends.cudnn.benchmark = True
    Path(args.out).mkdir(parents=True, exist_ok=True)
    env = environment(args.device)
    deadline = Deadline(args.time_budget)
    args.skipped_layouts, args.skipped_cases, args.sparsity_notes = [], [], []
    print(f"# GPU Conv2d benchmark: {_count(args.shapes)} at batch {args.batch} on {env['gpu']}", flush=True)
    rows = []
    for shape, _ in args.shapes:
        for layout in args.layouts:
            reason = block_unsupported(shape, layout)
            if reason:
                args.skipped_layouts.append(f"{shape.geometry}, {layout}: {reason}")
                print(f"  skipped: {args.skipped_layouts[-1]}", flush=True)
        for dtype in args.dtypes:
            run_shape(shape, dtype, args, env, deadline, rows)
    return finish(write_results(rows, env, args, deadline), rows, args)


def run_shape(shape, dtype, args, env, deadline, rows: list) -> None:
    """Every case of one shape in one dtype, appended to ``rows`` and written out one by one."""
    built, dense_ref = None, {}
    for layout in (layout for layout in args.layouts if not block_unsupported(shape, layout)):
        for sparsity in args.sparsities:
            fields = {"dtype": dtype_name(dtype), "shape": shape.geometry, "layout": layout_key(layout),
                      "sparsity": sparsity, "layer": shape.title, "spec": shape.spec}
            label = f"{fields['dtype']} {shape.geometry} {fields['layout']} {sparsity}"
            if deadline.skip(label):
                continue
            mask = case_mask(shape, layout, sparsity, fields, args, first_dtype=dtype == args.dtypes[0])
            if mask is None:
                continue
            if built is None:  # only for a shape with a case to run
                built = setup(shape, dtype, args)
            dense, compiled, x, grad = built
            cands, skipped = build_case(dense, compiled, shape, layout, mask.to(args.device), args.device)
            case_ref = {}
            rows += measure_case(cands, skipped,
                                 lambda c: check(c, dense, x, grad, dtype, args.device, dense_ref, case_ref),
                                 x, grad, args.device, args, fields, label)
            write_results(rows, env, args, deadline)


def case_mask(shape, layout, sparsity, fields: dict, args, first_dtype: bool):
    """The case's mask, its sparsity as built in ``fields``; None when it keeps nothing. What a case could not
    get (an empty layer, or a sparsity the blocks cannot give) is noted once, for the first dtype."""
    mask = conv_mask(shape, layout, sparsity)
    kept = int(mask.sum())
    fields["actual_sparsity"] = 1 - kept / mask.numel()
    where = f"{shape.geometry} {fields['layout']} {sparsity:g}"
    if kept == 0:
        if first_dtype:
            args.skipped_cases.append(f"{where}: {units(shape, layout, 0)}, the layer would be empty")
        return None
    if abs(fields["actual_sparsity"] - sparsity) > 0.005 and first_dtype:
        args.sparsity_notes.append(f"{where}: {fields['actual_sparsity']:.3f} ({units(shape, layout, kept)})")
    return mask


# -------------------------------------------------------------------------------------------- report
COLUMNS = ["dtype", "shape", "layer", "spec", "layout", "sparsity", "actual_sparsity", "candidate"] + \
    [f"{p}_ms" for p in PHASES] + [f"{p}_iqr_ms" for p in PHASES] + [f"speedup_{p}" for p in PHASES] + \
    ["check", "notes"]


def _count(shapes) -> str:
    return f"{len(shapes)} conv shape{'s' if len(shapes) != 1 else ''}"


def write_results(rows, env, args, deadline) -> str:
    return save(rows, COLUMNS, render(rows, env, args, deadline), args)


def render(rows, env, args, deadline) -> str:
    fmt = "channels_last" if args.channels_last else "NCHW (contiguous)"
    head = report_head(f"GPU Conv2d benchmark: {_count(args.shapes)} at batch {args.batch}", env, args,
                       deadline, "benchmarks.gpu_conv",
                       [("Memory format", f"{fmt}, the same for every candidate"),
                        ("dense_compiled", args.compile_note or ("left out: --no-compile" if args.no_compile else
                                                                 "torch.compile(nn.Conv2d, dynamic=False)")),
                        ("cuDNN", "torch.backends.cudnn.benchmark = True (algorithm search in the untimed steps)")])
    shapes = ["## Shapes", ""] + [f"- {s.geometry}: {s.title}, batch {s.batch}, bias {'on' if s.bias else 'off'}"
                                  + (f" (same geometry, not timed again: {', '.join(also)})" if also else "")
                                  for s, also in args.shapes]
    for title, notes in (("Skipped: the block does not tile the weight", args.skipped_layouts),
                         ("Skipped: the mask keeps nothing", args.skipped_cases),
                         ("Sparsity as built, where the mask's units cannot give the nominal one (the summary "
                          "interpolates at these)", args.sparsity_notes)):
        if notes:
            shapes += ["", title + ":", ""] + [f"- {n}" for n in notes]
    body = []
    for dtype in sorted({r["dtype"] for r in rows}):
        body += [f"## {dtype}", "", "sk's forward+backward against the faster of dense and dense_compiled: the "
                 "break-even sparsity (interpolated between the measured ones) and the speedup at "
                 + " and ".join(f"{s:g}" for s in SUMMARY_SPARSITIES) + ":", "", summary_table(rows, dtype), "",
                 "Forward+backward speedup vs dense (eager cuDNN):", "",
                 speedup_table(rows, dtype, ("shape", "layout", "sparsity")), ""]
    detail = ["## All rows", "", rows_table(rows, ("dtype", "shape", "layout", "sparsity"))]
    return "\n".join(head + shapes + [""] + body + detail) + "\n"


def summary_table(rows, dtype) -> str:
    mine = [r for r in rows if r["dtype"] == dtype]
    table = []
    for layout in dict.fromkeys(r["layout"] for r in mine):
        for shape in dict.fromkeys(r["shape"] for r in mine if r["layout"] == layout):
            points = sk_points([r for r in mine if r["layout"] == layout and r["shape"] == shape])
            if not points:
                continue
            be = break_even([(actual, speedup) for _, actual, speedup in points])
            if be is None:
                verdict = f"> {points[-1][1]:.3g} (never)"
            elif be <= points[0][1]:
                verdict = f"≤ {points[0][1]:.3g}"
            else:
                verdict = f"{be:.2f}"
            at = {nominal: speedup for nominal, _, speedup in points}
            table.append([layout, shape, verdict] + [fmt_ratio(at.get(s)) for s in SUMMARY_SPARSITIES])
    return markdown_table(["layout", "shape", "break-even"] + [f"sk ×dense @{s:g}" for s in SUMMARY_SPARSITIES],
                          table, "lllrr")


def sk_points(rows):
    """(nominal sparsity, actual sparsity, best dense f+b median / sk f+b median), sorted by sparsity, for the
    cases where sk and a dense candidate were timed."""
    points = []
    for s in sorted({r["sparsity"] for r in rows}):
        timed = {r["candidate"]: r for r in rows if r["sparsity"] == s and r.get("fwd+bwd_ms", float("nan")) ==
                 r.get("fwd+bwd_ms", float("nan"))}
        dense = [timed[n]["fwd+bwd_ms"] for n in ("dense", "dense_compiled") if n in timed]
        if "sk" in timed and dense:
            points.append((s, timed["sk"]["actual_sparsity"], min(dense) / timed["sk"]["fwd+bwd_ms"]))
    return points


if __name__ == "__main__":
    sys.exit(main())
