"""Running the network on a batch of windows: arithmetic precision, memory layout, and stopping early.

HRNet (like PSPNet) ends with a bilinear ``align_corners=True`` resize of its low-resolution logits to the input
size, the same resize the original test code applies to any model whose output is smaller than its input. Our
models skip it when called with ``resize=False``, so :class:`Network` returns the low-resolution logits and the
caller upsamples only the pixels it keeps (the padding is cut away, rows are evaluated in bands): the same
arithmetic on fewer pixels, and a 713x713 window's 194-channel logits (394 MB per image) never exist at once. A
module of the caller's own has its final resize cut off with ``torch.fx`` instead, when it can be traced. Either
way the low-resolution output is checked numerically once, on a small input; a model whose output differs from
the upsampled low-resolution one runs whole.

For ``precision="bf16"`` the network runs as a copy with every BatchNorm folded into the convolution before it,
stored in bfloat16 (half the fp32 weights' memory): no per-layer casts as under autocast and one pass less over
every feature map per BatchNorm. Our models name their (conv, BatchNorm) pairs (``conv_bn_pairs()``), so their copy
is an instance of the same class; a module of the caller's is traced with ``torch.fx`` to find them. fp16 runs
under autocast (its narrow range makes folded weights riskier).
"""

from __future__ import annotations

import copy
import gc
import sys
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from mseg_semantic.errors import InputError
from mseg_semantic.models.registry import takes_resize
from mseg_semantic.precision import (
    AUTO,
    TORCH_PRECISIONS,
    autocast,
    cpu_has_native_bf16,
    low_precision_dtype,
)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> what the device runs fastest without giving up range: bf16, else fp16 (GPU), else fp32."""
    if precision != AUTO:
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


def cut_final_resize(module: nn.Module | fx.GraphModule) -> fx.GraphModule | None:
    """A module of the caller's without its final ``F.interpolate(..., mode="bilinear", align_corners=True)``, or None.

    The result shares the model's parameters. None when the model cannot be traced with ``torch.fx`` or does
    something else last. (Our own models need no tracing: :func:`takes_resize`.)
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


def folded_copy(model: nn.Module, pairs: Iterable[tuple[str, str]], dtype: torch.dtype) -> nn.Module:
    """A copy of an eval-mode model for low-precision inference, its weights in ``dtype``, without tracing.

    ``pairs`` names each BatchNorm2d to fold and the Conv2d whose output only it reads (a model's
    ``conv_bn_pairs()``): the convolution is replaced by the folded one, the BatchNorm by an identity. The copy is
    an instance of the model's class and runs its forward. The caller's model is not modified and no full fp32
    copy is ever made: the module tree is copied with every other tensor cast as it goes, and the folded pairs are
    built one at a time.
    """
    pairs = list(pairs)
    modules = [model.get_submodule(name) for names in pairs for name in names]
    folded = {id(t) for module in modules for t in (*module.parameters(), *module.buffers())}
    # deepcopy takes what the memo maps a tensor to instead of copying it: the cast tensor, or (for the pairs,
    # replaced below) the original, so the model's fp32 weights are never copied as a whole.
    memo: dict[int, object] = {}
    for tensor in (*model.parameters(), *model.buffers()):
        memo[id(tensor)] = tensor if id(tensor) in folded else _cast(tensor, dtype)
    copied = copy.deepcopy(model, memo)
    del memo
    for conv, bn in pairs:
        _replace(copied, conv, fuse_conv_bn_eval(model.get_submodule(conv), model.get_submodule(bn)).to(dtype))
        _replace(copied, bn, nn.Identity())
    return copied


def _cast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A new tensor (a new Parameter for a Parameter): floating-point values in ``dtype``, others as they are."""
    value = tensor.detach().to(dtype, copy=True) if tensor.is_floating_point() else tensor.detach().clone()
    return nn.Parameter(value, requires_grad=False) if isinstance(tensor, nn.Parameter) else value


def _replace(root: nn.Module, target: str, new: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, new)


def low_precision_copy(module: nn.Module, dtype: torch.dtype) -> fx.GraphModule | None:
    """A traced version of an eval-mode module of the caller's for low-precision inference, weights in ``dtype``.

    Each BatchNorm2d that only follows a Conv2d is folded into it; every other module with weights is copied. The
    caller's model is not modified and no full fp32 copy is ever made (only one layer at a time while folding).
    None when the model cannot be traced or uses tensors outside its modules. (Our own models are copied without
    tracing: :func:`folded_copy`.)
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
        _replace(graph_module, target, new)
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

    ``(h', w')`` is the input size, or the model's own output resolution when its final resize is skipped
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
        compile: bool = False,
    ) -> None:
        if precision not in TORCH_PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(TORCH_PRECISIONS)}; got {precision!r}")
        self.device = device
        self.precision = precision
        self.channels_last = channels_last
        self._dtype = low_precision_dtype(precision)
        #: What runs: the model (called with ``resize=False`` when it stops early), a module of the caller's traced
        #: without its final resize, or a low-precision copy of either. No other reference to the caller's model is
        #: kept, so with a low-precision copy an fp32 model that nobody else holds (one a Segmenter loaded from a
        #: path or name) is freed: 264 MB for HRNet-W48.
        self.module: nn.Module = model
        #: Keywords of every call: ``resize=False`` when the module is one of ours that stops early.
        self._options: dict[str, bool] = {}
        self.early_exit = False
        if early_exit:
            if takes_resize(model):
                low, options = model, {"resize": False}
            else:
                low, options = cut_final_resize(model), {}
            if low is not None and self._matches(model, low, options):
                self.module, self._options, self.early_exit = low, options, True
        self._copied = False
        if precision == "bf16":
            folded: nn.Module | None
            if callable(getattr(self.module, "conv_bn_pairs", None)):
                folded = folded_copy(self.module, self.module.conv_bn_pairs(), self._dtype)
            else:
                folded = low_precision_copy(self.module, self._dtype)
                # torch.fx tracing leaves reference cycles (frames inspected by its proxies) that hold the traced
                # fp32 model until the cyclic collector happens to run; collect them now, so the fp32 model is freed
                # as soon as the caller drops it.
                gc.collect()
            if folded is not None:
                # Only our own copy changes layout; the caller's model keeps its weights (inputs are NHWC anyway).
                self.module = folded.to(memory_format=torch.channels_last) if channels_last else folded
                self._copied = True
                release_free_memory()  # the folding's temporaries, back to the system
        if compile:
            # Shapes are static per window size (a preset has one or a few), so each compiles once; the first call
            # of each shape pays the compilation.
            self.module = torch.compile(self.module, dynamic=False)

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        if self._copied:
            return self._output(self.module(batch.to(self._dtype), **self._options))
        with autocast(self.device, self.precision):
            return self._output(self.module(batch, **self._options))

    @staticmethod
    def _output(out: torch.Tensor | tuple | list) -> torch.Tensor:
        return out[0] if isinstance(out, (tuple, list)) else out

    @torch.inference_mode()
    def _matches(self, model: nn.Module, low: nn.Module, options: dict[str, bool]) -> bool:
        """Does upsampling ``low(x, **options)`` reproduce the model's output, which has the input's size? Checked in
        fp32 on 37x50. (A model whose output has another size is resized to the window by the caller after its own
        resize, which the low-resolution output would skip.)"""
        x = torch.randn(1, 3, 37, 50, generator=torch.Generator().manual_seed(0)).to(self.device)
        full = self._output(model(x))
        if full.dim() != 4 or full.shape[-2:] != x.shape[-2:]:
            return False
        try:
            out = self._output(low(x, **options))
        except Exception:
            return False
        if out.dim() != 4 or out.shape[:2] != full.shape[:2]:
            return False
        up = F.interpolate(out, size=full.shape[-2:], mode="bilinear", align_corners=True)
        return bool(torch.allclose(up, full, rtol=1e-4, atol=1e-4 * float(full.abs().max()) + 1e-6))
