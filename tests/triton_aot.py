"""Compile the Triton kernels ahead of time for a GPU architecture, on a machine without a GPU.

Triton's interpreter runs the kernels' Python, not their compilation: a construct the compiler rejects, a
tile that cannot be laid out, or a config whose shared memory does not fit would only show up on a GPU.
``triton.compile`` with an explicit ``GPUTarget`` needs no driver (ptxas ships with the wheel), so this
builds every kernel variant down to a cubin for sm_80 (A100) and sm_90 (H100/H200) and reports the shared
memory Triton allocated against what those GPUs have.

Run with ``TRITON_INTERPRET=0`` (under the interpreter ``@triton.jit`` makes no compilable function):

    TRITON_INTERPRET=0 python tests/triton_aot.py            # every tuned config, all variants (~10 min here)
    TRITON_INTERPRET=0 python tests/triton_aot.py --quick    # the fixed config, bf16, 128x32 (test_triton_compile)
    TRITON_INTERPRET=0 python tests/triton_aot.py --only conv,conv_dx,conv_dw   # some variants only

Variants: the Linear family (``spmm``, ``spmm_t``, ``spmm_bt``, ``sddmm``) and the block-sparse Conv2d
(``conv``: the forward with bias, ``conv_dx``: the input gradient, ``conv_dw``: the weight gradient into float32
partials). The launch-time specialisation is imitated: pointers 16-byte aligned; for the Linear kernels batch
and strides divisible by 16 and the unit output stride a constant. The conv kernels get every integer as a
plain runtime i32 (no stride or geometry specialised to 1): the most general code they compile to. Exit
status 1 if anything fails to compile or does not fit.
"""
from __future__ import annotations

import importlib
import sys

SHARED_BYTES = {80: 166912, 90: 232448}  # opt-in shared memory per block: A100, H100/H200
_TYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
_ALIGNED_INTS = {"batch", "stride_dense", "stride_out_row", "stride_out_b", "stride_a", "stride_b"}
VARIANTS = ("spmm", "spmm_t", "spmm_bt", "sddmm", "conv", "conv_dx", "conv_dw")


def _modules():
    return (importlib.import_module("sparsekern.triton.bsr_spmm"),
            importlib.import_module("sparsekern.triton.bsr_sddmm"),
            importlib.import_module("sparsekern.triton.bsr_conv2d"))


class _Tensor:
    """What the prune estimate asks of a tensor argument."""

    def __init__(self, element_size):
        self._element_size = element_size

    def element_size(self):
        return self._element_size


class Variant:
    """One kernel variant: what to compile (kernel, pointer types, constexprs) and how its autotuner chooses
    (fixed config, tuned list, the tile/shared-memory estimate and the launch arguments it reads)."""

    def __init__(self, kernel, tuning, fixed, tuned, tile, pointers, consts, prune_args):
        self.kernel, self.tuning, self.fixed, self.tuned, self.tile = kernel, tuning, fixed, tuned, tile
        self.pointers, self.consts, self.prune_args = pointers, consts, prune_args


def variant_args(variant, dtype, bh, bw):
    spmm, sddmm, conv = _modules()
    t = "*" + _TYPES[dtype]
    element = 4 if dtype == "float32" else 2
    if variant == "sddmm":
        pointers = {"a_ptr": t, "b_ptr": t, "offsets_ptr": "*i32", "indices_ptr": "*i32", "out_ptr": t}
        consts = {"BH": bh, "BW": bw}
        return Variant(sddmm._bsr_sddmm_kernel, sddmm.tuning, sddmm.FIXED_CONFIG, sddmm.TUNED_CONFIGS,
                       sddmm._tile, pointers, consts, {"a_ptr": _Tensor(element), **consts})
    if variant in ("conv", "conv_dx"):
        dx = variant == "conv_dx"
        pointers = {"src_ptr": t, "values_ptr": t, "offsets_ptr": "*i32", "indices_ptr": "*i32",
                    "perm_ptr": "*i64" if dx else "*i32", "bias_ptr": t, "out_ptr": t}
        consts = {"BH": bh, "BW": bw, "TRANSPOSED": dx, "HAS_BIAS": not dx}
        fixed, tuned = ((conv.INPUT_GRAD_FIXED, conv.INPUT_GRAD_CONFIGS) if dx else
                        (conv.FORWARD_FIXED, conv.FORWARD_CONFIGS))
        return Variant(conv._bsr_conv2d_gemm_kernel, conv.tuning, fixed, tuned, conv._gemm_tile, pointers,
                       consts, {"values_ptr": _Tensor(element), **consts})
    if variant == "conv_dw":
        pointers = {"grad_ptr": t, "x_ptr": t, "offsets_ptr": "*i32", "indices_ptr": "*i32", "out_ptr": "*fp32"}
        consts = {"BH": bh, "BW": bw}
        return Variant(conv._bsr_conv2d_weight_grad_kernel, conv.tuning, conv.WEIGHT_GRAD_FIXED,
                       conv.WEIGHT_GRAD_CONFIGS, conv._weight_grad_tile, pointers, consts,
                       {"x_ptr": _Tensor(element), **consts})
    pointers = {"values_ptr": t, "offsets_ptr": "*i32", "indices_ptr": "*i32", "perm_ptr": "*i64",
                "dense_ptr": t, "bias_ptr": t, "out_ptr": t}
    consts = {"BH": bh, "BW": bw, "TRANSPOSED": variant == "spmm_t", "HAS_BIAS": variant == "spmm_bt"}
    consts["stride_out_row" if variant == "spmm_bt" else "stride_out_b"] = 1  # what Triton specialises
    return Variant(spmm._bsr_spmm_kernel, spmm.tuning, spmm.FIXED_CONFIG, spmm.TUNED_CONFIGS, spmm._tile,
                   pointers, consts, {"values_ptr": _Tensor(element), **consts})


def compile_variant(variant, dtype, bh, bw, config, cc):
    """Compile one config of one variant for sm_<cc>; returns the shared memory (bytes) it uses."""
    import triton
    from triton.backends.compiler import GPUTarget

    v = variant_args(variant, dtype, bh, bw)
    conv = variant.startswith("conv")
    fn = v.kernel.fn  # the JITFunction under the autotuner
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in v.consts or name in config.kwargs:
            signature[name] = "constexpr"
        elif name in v.pointers:
            signature[name] = v.pointers[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "i32"
            if name in _ALIGNED_INTS and not conv:
                attrs[(i,)] = [["tt.divisibility", 16]]
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs={**v.consts, **config.kwargs},
                                       attrs=attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", cc, 32),
                              options={"num_warps": config.num_warps, "num_stages": config.num_stages})
    return compiled.metadata.shared


def configs_for(variant, dtype, bh, bw, cc, fixed_only=False):
    """The configs the autotuner would try on that GPU (after the module's prune), or the fixed one."""
    v = variant_args(variant, dtype, bh, bw)
    if fixed_only:
        return [v.fixed]
    real = v.tuning.max_shared_bytes
    v.tuning.max_shared_bytes = lambda _args: SHARED_BYTES[cc]
    try:
        return v.tuning.make_prune(v.tile)(v.tuned, v.prune_args)
    finally:
        v.tuning.max_shared_bytes = real


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    quick = "--quick" in argv
    variants = VARIANTS
    if "--only" in argv:
        variants = tuple(argv[argv.index("--only") + 1].split(","))
        unknown = set(variants) - set(VARIANTS)
        if unknown:
            print(f"unknown variant(s) {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
            return 2
    blocks = [(128, 32)] if quick else [(16, 16), (64, 64), (128, 128), (128, 32), (16, 128)]
    dtypes = ["bfloat16"] if quick else ["float32", "float16", "bfloat16"]
    failures = 0
    for cc in (80, 90):
        for dtype in dtypes:
            for bh, bw in blocks:
                for variant in variants:
                    for config in configs_for(variant, dtype, bh, bw, cc, fixed_only=quick):
                        what = (f"sm_{cc} {dtype} {bh}x{bw} {variant} {config.kwargs} w{config.num_warps} "
                                f"s{config.num_stages}")
                        try:
                            shared = compile_variant(variant, dtype, bh, bw, config, cc)
                        except Exception as error:  # report every failure, not just the first
                            failures += 1
                            print(f"FAIL {what}: {type(error).__name__}: {error}", flush=True)
                            continue
                        fits = shared <= SHARED_BYTES[cc]
                        failures += not fits
                        print(f"{'ok  ' if fits else 'FULL'} {what}: {shared} B shared", flush=True)
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
