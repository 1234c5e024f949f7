"""Running the network on a batch of windows: arithmetic precision, memory layout, and stopping early.

HRNet (like PSPNet) ends with a bilinear ``align_corners=True`` resize of its stride-4 logits to the input size,
the same resize the original test code applies to any model whose output is smaller than its input. The network
is traced with ``torch.fx`` and that last resize cut off, so :class:`Network` returns the stride-4 logits and the
caller upsamples only the pixels it keeps (the padding is cut away, rows are evaluated in bands): the same
arithmetic on fewer pixels, and a 713x713 window's 194-channel logits (394 MB per image) never exist at once. The
cut is checked numerically once, on a small input; a model that cannot be traced, or whose output differs from the
upsampled cut, runs whole.

For ``precision="bf16"`` the network runs as a copy with every BatchNorm folded into the convolution before it,
stored in bfloat16 (half the fp32 weights' memory): no per-layer casts as under autocast and one pass less over
every feature map per BatchNorm. fp16 runs under autocast (its narrow range makes folded weights riskier).
"""

from __future__ import annotations

import copy
import functools
import gc
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from mseg_semantic.errors import InputError
from mseg_semantic.precision import PRECISIONS, autocast, low_precision_dtype


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when the CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> what the device runs fastest without giving up range: bf16, else fp16 (GPU), else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def cut_final_resize(module: nn.Module | fx.GraphModule) -> fx.GraphModule | None:
    """The model without its final ``F.interpolate(..., mode="bilinear", align_corners=True)``, or None.

    The result shares the model's parameters. None when the model cannot be traced with ``torch.fx`` or does
    something else last.
    """
    try:
        graph_module = module if isinstance(module, fx.GraphModule) else fx.symbolic_trace(module)
    except Exception:  # tracing fails on data-dependent control flow; such a model simply runs whole
        return None
    output = next(node for node in graph_module.graph.nodes if node.op == "output")
    last = output.args[0]
    if not (
        isinstance(last, fx.Node)
        and last.op == "call_function"
        and last.target is F.interpolate
        and last.kwargs.get("mode") == "bilinear"
        and last.kwargs.get("align_corners") is True
    ):
        return None
    output.args = (last.args[0],)
    graph_module.graph.eliminate_dead_code()
    graph_module.recompile()
    return graph_module


def low_precision_copy(module: nn.Module, dtype: torch.dtype) -> fx.GraphModule | None:
    """A traced version of an eval-mode model for low-precision inference, its weights copied in ``dtype``.

    Each BatchNorm2d that only follows a Conv2d is folded into it; every other module with weights is copied. The
    caller's model is not modified and no full fp32 copy is ever made (only one layer at a time while folding).
    None when the model cannot be traced or uses tensors outside its modules.
    """
    try:
        graph_module = module if isinstance(module, fx.GraphModule) else fx.symbolic_trace(module)
    except Exception:  # see cut_final_resize
        return None
    if any(node.op == "get_attr" for node in graph_module.graph.nodes):
        return None  # tensors used directly by the forward would stay shared and in fp32
    modules = dict(graph_module.named_modules())
    calls: dict[str, int] = {}
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1

    def replace(target: str, new: nn.Module) -> None:
        parent, _, name = target.rpartition(".")
        setattr(graph_module.get_submodule(parent) if parent else graph_module, name, new)
        modules[target] = new

    copied: set[str] = set()
    for node in list(graph_module.graph.nodes):
        source = node.args[0] if node.args else None
        if (
            node.op == "call_module"
            and isinstance(modules[node.target], nn.BatchNorm2d)
            and isinstance(source, fx.Node)
            and source.op == "call_module"
            and isinstance(modules[source.target], nn.Conv2d)
            and len(source.users) == 1
            and calls[source.target] == 1
            and source.target not in copied
        ):
            replace(source.target, fuse_conv_bn_eval(modules[source.target], modules[node.target]).to(dtype))
            copied.add(source.target)
            node.replace_all_uses_with(source)
            graph_module.graph.erase_node(node)
    for node in graph_module.graph.nodes:
        if node.op == "call_module" and node.target not in copied:
            original = modules[node.target]
            if any(True for _ in original.parameters()) or any(True for _ in original.buffers()):
                replace(node.target, copy.deepcopy(original).to(dtype))
            copied.add(node.target)
    graph_module.graph.eliminate_dead_code()
    graph_module.recompile()
    graph_module.delete_all_unused_submodules()
    return graph_module


def release_free_memory() -> None:
    """Hand memory that the C allocator keeps after large temporaries back to the system (glibc only; else no-op).

    Building the bf16 copy of a 66M-parameter model frees about 100 MB of fp32 temporaries that glibc would keep
    in its free lists, counted in the process's peak memory from then on."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # musl or another libc
        pass


class Network:
    """A segmentation model called on normalised windows (N, 3, h, w); returns logits (N, K, h', w').

    ``(h', w')`` is the input size, or the model's own output resolution when its final resize could be cut off
    (:attr:`early_exit`): the caller resizes those logits to the window with ``align_corners=True`` as the original
    does. Logits are float32 for ``precision="fp32"``, else in the low-precision dtype.
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device,
        precision: str = "fp32",
        channels_last: bool = False,
        early_exit: bool = True,
    ) -> None:
        if precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        self.device = device
        self.precision = precision
        self.channels_last = channels_last
        self._dtype = low_precision_dtype(precision)
        #: What runs: the model, its traced copy without the final resize, or its low-precision copy. No other
        #: reference to the caller's model is kept, so with a low-precision copy an fp32 model that nobody else
        #: holds (one a Segmenter loaded from a path or name) is freed: 264 MB for HRNet-W48.
        self.module: nn.Module = model
        self.early_exit = False
        if early_exit:
            cut = cut_final_resize(model)
            if cut is not None and self._matches(model, cut):
                self.module, self.early_exit = cut, True
        self._copied = False
        if precision == "bf16":
            folded = low_precision_copy(self.module, self._dtype)
            if folded is not None:
                # Only our own copy changes layout; the caller's model keeps its weights (inputs are NHWC anyway).
                self.module = folded.to(memory_format=torch.channels_last) if channels_last else folded
                self._copied = True
                # torch.fx tracing leaves reference cycles (frames inspected by its proxies) that hold the traced
                # fp32 model until the cyclic collector happens to run; collect them now, so the fp32 model is freed
                # as soon as the caller drops it, then hand the folding's temporaries back to the system.
                gc.collect()
                release_free_memory()

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        if self._copied:
            return self._output(self.module(batch.to(self._dtype)))
        with autocast(self.device, self.precision):
            return self._output(self.module(batch))

    @staticmethod
    def _output(out: torch.Tensor | tuple | list) -> torch.Tensor:
        return out[0] if isinstance(out, (tuple, list)) else out

    @torch.inference_mode()
    def _matches(self, model: nn.Module, cut: nn.Module) -> bool:
        """Does upsampling the cut model's output reproduce the model's output? Checked in fp32 on 37x50."""
        x = torch.randn(1, 3, 37, 50, generator=torch.Generator().manual_seed(0)).to(self.device)
        full = self._output(model(x))
        try:
            low = self._output(cut(x))
        except Exception:
            return False
        if low.dim() != 4 or low.shape[:2] != full.shape[:2]:
            return False
        up = F.interpolate(low, size=full.shape[-2:], mode="bilinear", align_corners=True)
        return bool(torch.allclose(up, full, rtol=1e-4, atol=1e-4 * float(full.abs().max()) + 1e-6))
