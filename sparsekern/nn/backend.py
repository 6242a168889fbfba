"""Which backend a sparse layer runs: the sparse kernels or the dense masked GEMM.

``"sparse"`` runs the sparsekern ops (compiled kernel where one exists, else the reference).
``"dense"`` is the named dense fallback (``dense_fallback.py``): the kept values are expanded into a dense
weight and the dense GEMMs (MKL/cuBLAS) run. It skips nothing; it exists because at low sparsity a dense
GEMM is faster.
``"auto"`` picks the sparse kernels at and above the sparsity where they start to win on this machine.
"""
from __future__ import annotations

import functools
import os

import torch

from .. import _extension

BACKENDS = ("auto", "sparse", "dense")

# Where the sparse CPU kernels start to beat dense MKL/oneDNN depends on the machine: on a 2-core AVX-512
# Xeon dense oneDNN convolutions ran 2-3x faster than on a 2-core AVX2 EPYC, the sparse kernels far less, so
# the same 3x3 layer that beat dense from 60 % sparsity on the EPYC needed 70-90 % on the Xeon (the EPYC's
# table there ran "auto" at 0.75-0.93x dense). AVX-512 alone does not settle it: on a 2-core AMD EPYC with
# AVX-512 (Zen 4) dense MKL/oneDNN ran 2-3x slower than on the Xeon, and the crossovers sat 0.1-0.2 lower.
# One table per profile, each measured on one machine of that kind; SPARSEKERN_CPU_PROFILE picks one by hand.
CPU_PROFILES = ("avx2", "avx512", "avx512_amd")


def _cpu_vendor() -> str:
    """The CPU's vendor string ("GenuineIntel", "AuthenticAMD"), from /proc/cpuinfo; "" where unreadable."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as info:
            for line in info:
                if line.startswith("vendor_id"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def detect_cpu_profile(capability: str, vendor: str) -> str:
    """The profile for a machine whose torch CPU capability is ``capability`` and vendor is ``vendor``."""
    if capability != "AVX512":
        return "avx2"
    return "avx512_amd" if vendor == "AuthenticAMD" else "avx512"


@functools.lru_cache(maxsize=None)
def _detected_cpu_profile() -> str:
    return detect_cpu_profile(torch.backends.cpu.get_cpu_capability(), _cpu_vendor())


@torch.compiler.assume_constant_result  # compiled graphs bake the table in: no graph break on os.environ
def cpu_profile() -> str:
    """Which measured crossover table serves this machine: "avx512_amd" where torch's CPU kernels use AVX-512
    on an AMD CPU, "avx512" where they do on another (measured on Intel Xeon), else "avx2" (also for machines
    without AVX2: nothing was measured there). ``SPARSEKERN_CPU_PROFILE`` overrides the detection."""
    forced = os.environ.get("SPARSEKERN_CPU_PROFILE")
    if forced:
        if forced not in CPU_PROFILES:
            raise ValueError(f"SPARSEKERN_CPU_PROFILE: expected one of {CPU_PROFILES}, got {forced!r}")
        return forced
    return _detected_cpu_profile()


# Smallest sparsity at which the compiled CPU kernels beat dense MKL in forward+backward, per profile and
# layout, measured with `python -m benchmarks.run --suite crossover` (2 threads, float32, shapes
# 2048x2048@256, 768x3072@2048, 4096x1024@128):
#   avx2 (AMD EPYC Zen 3, benchmarks/results/crossover_cpu.md): CSR 0.80-0.94x dense at 0.65 and
#     0.89-1.09x at 0.7 (the dense fallback runs at 0.85-0.98x); 16x16 BSR 0.82-1.17x at 0.65, 0.95-1.35x at 0.7.
#   avx512 (Xeon with AVX-512 and AMX, crossover_cpu_xeon.md): the same 0.7 for both; CSR 0.82-0.85x dense
#     at 0.6 and 1.08-1.13x at 0.7, 16x16 BSR 0.76-1.14x at 0.6 and 1.00-1.50x at 0.7.
#   avx512_amd (AMD EPYC Zen 4, crossover_cpu_epyc_zen4.md and crossover_cpu_epyc_zen4_around_threshold.md,
#     after the fallback's compress fix): CSR 0.88-1.24x dense at 0.5, where the fallback measured 0.91-0.98x
#     (a tie on two shapes of three), 1.09-1.34x at 0.6, so 0.6; 16x16 BSR 0.87-1.07x at 0.5 (fallback at 0.4:
#     0.91-0.97x, the sparse kernels 0.80-0.85x), 1.23-1.33x at 0.6.
LINEAR_MIN_SPARSITY = {
    "avx2": {"csr": 0.70, "bsr": 0.70},
    "avx512": {"csr": 0.70, "bsr": 0.70},
    "avx512_amd": {"csr": 0.60, "bsr": 0.50},
}

# The same on CUDA, per layout kind: empty until measured on a GPU (`python -m benchmarks.gpu_linear`, run by
# benchmarks/gpu_session.sh on a lent GPU). Until a kind has an entry, "auto" runs the dense fallback on CUDA
# even where a compiled kernel serves it (backend="sparse" runs that kernel): an unmeasured crossover must not
# make "auto" slower than dense.
CUDA_MIN_SPARSITY: dict[str, float] = {}


def cpu_min_sparsity(layout_kind: str, profile: str | None = None) -> float:
    """The CPU crossover of a SparseLinear with layout ``layout_kind`` ("csr" or "bsr") on ``profile``
    (default: this machine's, ``cpu_profile()``)."""
    return LINEAR_MIN_SPARSITY[profile or cpu_profile()][layout_kind]


# Conv crossovers by kind of conv, as (smallest output map in pixels per sample, threshold) from the largest
# maps down; a map smaller than every entry never runs sparse. Measured with `python -m benchmarks.run
# --suite conv --shapes resnet18` and `--shapes vgg16,mobilenetv2`, `--sparsities 0.5,0.6,0.7,0.8,0.9,0.95,
# 0.98,0.99 --repeats 11`, batch 64, 2 threads, float32. The sparse kernels' advantage grows with the map
# (dense oneDNN is least efficient on few channels at large maps, the sparse plane kernels most efficient
# there), so the threshold falls with it. Below 0.5 nothing was measured, so nothing below 0.5 is sparse.
#   avx2 (AMD EPYC Zen 3; conv_cpu_latest.md, conv_cpu_vgg16_mobilenetv2_latest.md): sparse at the
#     threshold measured 1.0-1.5x dense (3x3 on >= 32x32: 1.15-1.5x at 0.6; >= 16x16: 1.4-1.5x at 0.7;
#     smaller: 1.3-2.1x at 0.8; 1x1 on >= 8x8: 1.0-1.8x at 0.5, smaller: 0.9-1.3x at 0.8, where the dense
#     fallback measured 0.89-0.9x; stride-1 depthwise on >= 8x8: 1.4-1.8x at 0.5). Strided depthwise
#     convs never beat dense (0.4-1.0x).
#   avx512 (Xeon with AVX-512 and AMX, 2026-12-02; derived from conv_cpu_xeon_*_freed_returned.md, checked
#     again with freed memory kept, against the faster dense of conv_cpu_xeon_resnet18_20261202.md and
#     conv_cpu_xeon_vgg16_mobilenetv2_20261202.md): 3x3 from 0.7 on >= 32x32 maps (0.97-1.00x there with the faster
#     dense, 2.1x on 3 input channels), 0.8 on >= 16x16 (1.00-1.29x), 0.9 below (1.45-1.72x; at 0.8:
#     0.72-0.85x on 8x8 to 2x2 maps); 1x1 and stride-1 depthwise from 0.5 on >= 16x16 maps (1.10-1.63x),
#     never below (the MobileNetV2 projections and depthwise convs on 8x8 and 4x4 maps never stayed ahead of
#     dense; the strided 128->256 1x1 on 8x8 outputs did, 1.04-2.12x, left to the fallback for want of a rule
#     that tells the two apart).
#   avx512, 2026-12-03, after the depthwise kernels (csrc/cpu/conv_depthwise.h) and the C++ conv autograd
#     (`--shapes mobilenetv2 --sparsities 0.0,0.5,...,0.9 --candidates dense,sk_csr --repeats 9`, and the
#     full `--shapes resnet18` run of conv_cpu_xeon_resnet18.md): stride-1 depthwise convs on those kernels
#     1.10-2.23x dense at 0.5 on 16x16 to 4x4 maps (1.08-1.41x at 0 on 8x8 and 16x16); strided ones (ad-hoc
#     script, 55 steps, medians) 144-ch 3x3/s2 to 8x8 1.00x at 0.8, 1.21-1.32x at 0.9, 192-ch to 4x4
#     0.90-0.95x at 0.9, 1.30x at 0.95; stride-1 1x1 on 8x8 maps 0.98-1.26x at 0.9 (0.91-1.17x at 0.8), on
#     4x4 still 0.85x at 0.9; strided 1x1 (ResNet-18's downsamples) 1.17-1.87x at 0.5 on 16x16 and 8x8
#     outputs, on 4x4 0.90x at 0.8 and 1.31x at 0.9. Where neither side reaches 0.95x (small MobileNetV2
#     layers, 1-3 ms per step, where the fallback ran 0.77-0.94x in conv_cpu_xeon_vgg16_mobilenetv2.md), the
#     threshold is where sparse beats the fallback: 1x1 on 8x8 from 0.8 (0.87-1.14x against 0.81-0.94x), on
#     4x4 from 0.95 (0.91-1.00x against 0.86-0.94x); strided depthwise on 4x4 outputs from 0.9 (0.97x
#     against 0.79x). After the row-shuffle phase split (conv_cpu_xeon_vgg16_mobilenetv2.md, 2026-12-03):
#     strided depthwise on 8x8 outputs 1.01-1.11x from 0.5, so sparse from 0.5 there.
#   avx512_amd (AMD EPYC Zen 4 with AVX-512, 2026-12-03; conv_cpu_epyc_zen4_resnet18.md and
#     conv_cpu_epyc_zen4_mobilenetv2_7b5f049.md): 3x3 from 0.6 on >= 32x32 output maps (1.12x there; 0.98x for the
#     strided 64->128 at 0.6, 1.27x at 0.7), 0.7 on >= 16x16 (1.20x; 0.93x at 0.6), 0.8 below (1.05-1.40x;
#     0.70-0.88x at 0.7), the AVX2 EPYC's thresholds; strided 1x1 from 0.5 on >= 8x8 outputs (1.23-1.76x),
#     0.8 on 4x4 (1.20x; 0.93x at 0.7); stride-1 1x1 from 0.5 on >= 8x8 maps (0.98-1.50x), 0.95 on 4x4
#     (1.24x; 0.42-0.93x below); depthwise on its kernels from 0.5 at stride 1 (1.15-2.34x on 16x16 to 4x4
#     maps) and strided to 8x8 outputs (1.30x), strided to 4x4 from 0.95 (1.69x; 0.59-0.88x below).
NEVER = 1.01  # a threshold above any sparsity: the dense fallback always

# A mask built for sparsity s keeps round((1-s)·n) weights, so its exact sparsity can fall a hair below s
# (0.69999992 for 768x3072 at 0.7; 0.89969 for a 144-channel depthwise 3x3 at 0.9, 1,296 weights); that must
# not flip the backend.
SPARSITY_TOLERANCE = 1e-3

CONV_MIN_SPARSITY = {
    "avx2": {
        "spatial": ((1024, 0.6), (256, 0.7), (1, 0.8)),   # kernels larger than 1x1
        "pointwise": ((64, 0.5), (1, 0.8)),               # 1x1, stride 1
        "pointwise_strided": ((64, 0.5), (1, 0.8)),       # 1x1, strided (measured together with stride 1)
        "depthwise": ((64, 0.5),),                        # stride 1, not on the depthwise kernels; strided: never
        "depthwise_kernels": ((64, 0.5),),                # measured with the plane kernels, before these existed
        "depthwise_strided_kernels": (),                  # not measured: never
    },
    "avx512": {
        "spatial": ((1024, 0.7), (256, 0.8), (1, 0.9)),
        "pointwise": ((256, 0.5), (64, 0.8), (16, 0.95)),
        "pointwise_strided": ((64, 0.5), (16, 0.9)),
        "depthwise": ((256, 0.5),),
        "depthwise_kernels": ((1, 0.5),),
        "depthwise_strided_kernels": ((64, 0.5), (16, 0.9)),
    },
    "avx512_amd": {
        "spatial": ((1024, 0.6), (256, 0.7), (1, 0.8)),
        "pointwise": ((64, 0.5), (16, 0.95)),
        "pointwise_strided": ((64, 0.5), (1, 0.8)),
        "depthwise": ((256, 0.5),),                       # not measured (the depthwise kernels serve these)
        "depthwise_kernels": ((1, 0.5),),
        "depthwise_strided_kernels": ((64, 0.5), (16, 0.95)),
    },
}


def depthwise_kernels_serve(in_channels: int, out_channels: int, groups: int, input_size, output_size,
                            kernel_size, stride, padding, dilation) -> bool:
    """Whether the CPU depthwise kernels (csrc/cpu/conv_depthwise.h, depthwise_plan) serve a conv of this
    geometry on an (H, W) input (after any padding the layer applies itself) with an (OH, OW) output: one input
    channel per output channel, and at stride 1 the output the input's size, strided every stride phase a
    kernel column reads no wider than the output."""
    if not (groups == in_channels == out_channels) or min(*input_size, *output_size) < 1:
        return False
    if tuple(stride) == (1, 1):
        return tuple(output_size) == tuple(input_size)
    width, sw = input_size[1], stride[1]
    for j in range(kernel_size[1]):
        phase = (j * dilation[1] - padding[1]) % sw
        if phase < width and -(-(width - phase) // sw) > output_size[1]:
            return False
    return True


def conv_min_sparsity(kernel_size, stride, groups: int, in_channels: int, out_pixels: int,
                      profile: str | None = None, *, depthwise_kernels: bool = False) -> float:
    """Smallest sparsity at which the compiled CPU conv kernels beat dense oneDNN in forward+backward, for a
    SparseConv2d whose output map has ``out_pixels`` pixels per sample, on ``profile`` (default: this
    machine's); > 1 means never (dense always). ``depthwise_kernels``: the layer runs on the depthwise kernels
    (``depthwise_kernels_serve``), which have their own crossover."""
    table = CONV_MIN_SPARSITY[profile or cpu_profile()]
    strided = tuple(stride) != (1, 1)
    if groups > 1 and in_channels == groups:
        if depthwise_kernels:
            steps = table["depthwise_strided_kernels" if strided else "depthwise_kernels"]
        elif strided:
            return NEVER
        else:
            steps = table["depthwise"]
    elif kernel_size[0] * kernel_size[1] == 1:
        steps = table["pointwise_strided" if strided else "pointwise"]
    else:
        steps = table["spatial"]
    for min_pixels, threshold in steps:
        if out_pixels >= min_pixels:
            return threshold
    return NEVER


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    return backend


def resolve_backend(backend: str, layout_kind: str, sparsity: float, device_type: str,
                    min_sparsity: float | None = None) -> str:
    """The backend ``"auto"`` stands for, given the layer's layout kind ("csr", "bsr" for SparseLinear,
    "conv2d_csr" / "conv2d_bsr" for SparseConv2d), sparsity and device; ``min_sparsity`` overrides the CPU
    table's crossover (``cpu_min_sparsity``; SparseConv2d's depends on its shape: ``conv_min_sparsity``). On CUDA the crossover comes from
    ``CUDA_MIN_SPARSITY`` (empty until measured: dense)."""
    if backend != "auto":
        return backend
    if not _extension.has_compiled_kernels(device_type, layout_kind):
        return "dense"
    if device_type == "cpu":
        threshold = cpu_min_sparsity(layout_kind) if min_sparsity is None else min_sparsity
    else:
        threshold = CUDA_MIN_SPARSITY.get(layout_kind)
        if threshold is None:
            return "dense"
    return "sparse" if sparsity >= threshold - SPARSITY_TOLERANCE else "dense"
