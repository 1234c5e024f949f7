"""The window and resize arithmetic of the original test-time algorithm (no model involved).

Every rounding rule here matters for identical results: windows advance by ``ceil(2/3 crop)`` and the last window
is aligned to the far edge (:func:`window_starts`; the padding around small images is
:func:`mseg_semantic.inference.windows.window_grid`'s), and bilinear resizes follow OpenCV's or PyTorch's sampling
exactly, computed for a band of rows at a time (:func:`resize_rows`). The short-side resize before all this
(Python's ``round``, ties to even) is :mod:`mseg_semantic.resizing`.
"""

from __future__ import annotations

import math

import torch

STRIDE_RATE = 2 / 3


def max_base_size(h: int, w: int, crop: int) -> int:
    """Largest short side at which an (h, w) image fits one ``crop`` x ``crop`` window (batched presets)."""
    return math.floor(min(h, w) * crop / max(h, w))


def window_starts(size: int, crop: int) -> list[int]:
    """Start offsets of the sliding windows along one axis of length ``size`` >= ``crop``."""
    stride = math.ceil(crop * STRIDE_RATE)
    count = math.ceil((size - crop) / stride) + 1
    return [min(i * stride + crop, size) - crop for i in range(count)]


def linear_taps(
    in_size: int,
    out_size: int,
    align_corners: bool = False,
    start: int = 0,
    end: int | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices (i0, i1) and the weight of i1 for output pixels ``start:end`` of a 1-D bilinear resize.

    ``align_corners=False``: half-pixel centres with edge clamping (OpenCV ``INTER_LINEAR``). ``align_corners=True``:
    corners map to corners, computed in float32 exactly as PyTorch's ``F.interpolate`` does, so results match it
    to rounding.
    """
    end = out_size if end is None else min(end, out_size)
    index = torch.arange(start, end, device=device)
    if align_corners:
        ratio = torch.tensor(float(in_size - 1) if out_size > 1 else 0.0, dtype=torch.float32, device=device)
        pos = ratio / max(out_size - 1, 1) * index.to(torch.float32)
    else:
        pos = ((index.to(torch.float64) + 0.5) * (in_size / out_size) - 0.5).clamp(min=0)
    i0 = pos.floor().long().clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    return i0, i1, (pos - i0).clamp(0, 1).to(torch.float32)


def source_span(in_size: int, out_size: int, start: int, end: int, align_corners: bool = False) -> tuple[int, int]:
    """The source pixels ``[lo, hi)`` that output pixels ``start:end`` of a 1-D bilinear resize read."""
    i0, i1, _ = linear_taps(in_size, out_size, align_corners, start, end)
    return int(i0.min()), int(i1.max()) + 1


def source_rows(in_h: int, out_h: int, row_start: int, row_end: int, align_corners: bool = False) -> tuple[int, int]:
    """The rows ``[lo, hi)`` of an ``in_h``-row map that rows ``row_start:row_end`` of its resize read."""
    return source_span(in_h, out_h, row_start, row_end, align_corners)


def resize_block(
    maps: torch.Tensor,
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    rows: tuple[int, int],
    cols: tuple[int, int],
    offset: tuple[int, int] = (0, 0),
    align_corners: bool = False,
) -> torch.Tensor:
    """Output pixels ``rows x cols`` of the bilinear resize of an (..., in_h, in_w) map to ``out_size``.

    ``maps`` may hold only the block of the source map starting at ``offset`` (it must contain what
    :func:`source_span` names). The width is interpolated first, then the rows, as PyTorch
    does. Float32 in, float32 out.
    """
    (in_h, in_w), (out_h, out_w) = in_size, out_size
    y0, y1, wy = linear_taps(in_h, out_h, align_corners, rows[0], rows[1], device=maps.device)
    x0, x1, wx = linear_taps(in_w, out_w, align_corners, cols[0], cols[1], device=maps.device)
    lo, hi = int(y0.min()), int(y1.max()) + 1
    band = maps.narrow(-2, lo - offset[0], hi - lo)
    # Both taps of every output column in one gather: several times faster than index_select on the last axis.
    pairs = band[..., torch.stack([x0 - offset[1], x1 - offset[1]], dim=1)]
    across = pairs[..., 0].mul_(1 - wx).add_(pairs[..., 1].mul_(wx))
    top = across.index_select(-2, y0 - lo).mul_((1 - wy)[:, None])
    return top.add_(across.index_select(-2, y1 - lo).mul_(wy[:, None]))


def resize_rows(
    maps: torch.Tensor,
    out_h: int,
    out_w: int,
    row_start: int = 0,
    row_end: int | None = None,
    *,
    in_h: int | None = None,
    row_offset: int = 0,
    align_corners: bool = False,
) -> torch.Tensor:
    """Rows ``row_start:row_end`` of the bilinear resize of ``maps`` (..., h, w) to (..., out_h, out_w).

    Same sampling as ``cv2.resize(..., INTER_LINEAR)`` and ``F.interpolate(..., mode="bilinear",
    align_corners=False)`` (half-pixel centres, edge clamping), or ``align_corners=True``, computed for a band of
    output rows only so that full-resolution multi-channel maps never need to exist at once. ``maps`` may hold
    only rows ``row_offset:row_offset + maps.shape[-2]`` of an ``in_h``-row map (those :func:`source_rows` names).
    Float32 in, float32 out.
    """
    row_end = out_h if row_end is None else min(row_end, out_h)
    in_h = maps.shape[-2] if in_h is None else in_h
    in_size = (in_h, maps.shape[-1])
    return resize_block(maps, in_size, (out_h, out_w), (row_start, row_end), (0, out_w), (row_offset, 0), align_corners)
