"""Cost of a segmentation model on this machine's CPU: parameters, GMACs/GFLOPs and forward latency.

Defaults: HRNet-W48 with 194 classes (every released MSeg model) at the three MSeg crop sizes 473, 593 and 713
(the 480p, 720p and 1080p models), batch 1, in fp32 and, where the CPU supports it, bf16 autocast.

    python benchmarks/models.py                       # the table for HRNet-W48
    python benchmarks/models.py --repeats 5 --sizes 473
    python benchmarks/models.py --arch pspnet101

MACs count the multiply-accumulates of convolutions and matrix products (``torch.utils.flop_counter``, run on the
``meta`` device so it costs no compute); GFLOPs = 2 x GMACs. The HRNet papers' "GFLOPs" are MACs (74.3 at
473x473 for HRNetV2-W48). Latency is the median of ``--repeats`` timed forwards after ``--warmup`` untimed ones,
under ``torch.inference_mode()``; the first forward is several times slower (oneDNN sets up its kernels), hence the
warm-up. Weights are random but scaled like trained ones (std 1/sqrt(fan_in)): with the original init (std 0.001)
activations shrink to ~1e-13, near the denormal range where CPUs slow down, which would not be a trained model's speed.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mseg_semantic.models import build_model, list_models


def count_macs(arch: str, num_classes: int, size: int) -> int:
    """Multiply-accumulates of one forward at ``size`` x ``size``, counted on the meta device."""
    with torch.device("meta"):
        model = build_model(arch, num_classes).eval()
        image = torch.empty(1, 3, size, size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(image)
    return counter.get_total_flops() // 2


def realistic_weights(model: nn.Module) -> nn.Module:
    """Convolution weights with std 1/sqrt(fan_in), so activations keep a trained network's scale."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = math.prod(module.weight.shape[1:])
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / math.sqrt(fan_in))
    return model


def median_latency(model: nn.Module, size: int, bf16: bool, warmup: int, repeats: int) -> float:
    """Median seconds of one forward of a (1, 3, size, size) input."""
    image = torch.randn(1, 3, size, size)
    times = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i in range(warmup + repeats):
            start = time.perf_counter()
            model(image)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_supports_bf16() -> bool:
    # oneDNN's own check (AVX512-BF16/AMX, or AVX512 emulation); a private op, hence the guard.
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="hrnet_w48", choices=list_models())
    parser.add_argument("--num-classes", type=int, default=194)
    parser.add_argument("--sizes", type=int, nargs="+", default=[473, 593, 713])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-bf16", action="store_true", help="time fp32 only")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    bf16 = cpu_supports_bf16() and not args.no_bf16
    model = realistic_weights(build_model(args.arch, args.num_classes)).eval()
    params = sum(p.numel() for p in model.parameters())

    print(f"{args.arch}, {args.num_classes} classes: {params:,} parameters")
    print(
        f"CPU: {platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
        f"capability {torch.backends.cpu.get_cpu_capability()}; median of {args.repeats} after {args.warmup} warm-up"
    )
    print()
    print("| input | GMACs | GFLOPs | fp32 s/img | bf16 s/img |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        macs = count_macs(args.arch, args.num_classes, size)
        fp32 = median_latency(model, size, False, args.warmup, args.repeats)
        half = f"{median_latency(model, size, True, args.warmup, args.repeats):.2f}" if bf16 else "n/a"
        print(f"| {size}x{size} | {macs / 1e9:.1f} | {2 * macs / 1e9:.1f} | {fp32:.2f} | {half} |", flush=True)


if __name__ == "__main__":
    main()
