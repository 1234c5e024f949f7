"""Sliding windows of one scale, and that scale's probability map evaluated lazily in bands of rows.

The original adds every window's probabilities into a padded (C, H, W) accumulator and divides by a count
map. Here each window keeps only the network output it needs (HRNet's stride-4 logits, the rows of them that the
image, not the padding, reads) and :class:`ScaleMap` computes any band of rows on demand with the same
arithmetic: upsample (align_corners=True), softmax, projection, flip average, sum over the covering windows in
the original order, divide by their count. So a full-resolution 194-channel map of a scale never exists, and the
padding's probabilities, which the original computes and throws away, are never computed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mseg_semantic.inference.geometry import linear_taps, source_span, window_starts


@dataclass(frozen=True)
class WindowGrid:
    """Where the windows of one resized image lie, in that image's pixel coordinates.

    ``height`` x ``width`` is the resized image; windows are ``win_h`` x ``win_w`` with top-left corners at every
    (y, x) of ``ys`` x ``xs`` (row-major order, the original's), negative where the window reaches into padding.
    """

    height: int
    width: int
    win_h: int
    win_w: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def pad_top(self) -> int:
        return max(0, -self.ys[0])

    @property
    def pad_left(self) -> int:
        return max(0, -self.xs[0])

    @property
    def canvas(self) -> tuple[int, int]:
        """Size of the padded image the windows are cut from."""
        return max(self.height, self.win_h), max(self.width, self.win_w)

    def windows(self) -> list[tuple[int, int]]:
        return [(y, x) for y in self.ys for x in self.xs]


#: The coarsest stride of HRNet. An untrained or trained network's output changes when the image moves by a pixel
#: relative to its stride-32 sampling grid, so smaller windows keep the image's offset modulo this, and their size
#: modulo this, equal to the original crop's: every strided layer then samples the image at the same pixels.
PAD_PHASE = 32


def _fit(length: int, crop: int) -> int:
    """The smallest window >= ``length`` whose size is the crop's modulo :data:`PAD_PHASE`."""
    return length + (crop - length) % PAD_PHASE


def _axis(size: int, crop: int, pad: str, max_window: int | None) -> tuple[int, tuple[int, ...]]:
    """Window length and start offsets along one axis, in image coordinates (negative: padding before)."""
    if size < crop:
        offset = int((crop - size) / 2)  # the original centres the image, the odd pixel of padding at the end
        if pad == "crop":
            return crop, (-offset,)
        offset %= PAD_PHASE
        return _fit(offset + size, crop), (-offset,)
    limit = crop if pad == "crop" or max_window is None else max(crop, max_window)
    if size <= limit:  # one window over the whole side, padded at the end only (by up to 31 pixels)
        return _fit(size, crop), (0,)
    window = limit - (limit - crop) % PAD_PHASE
    return window, tuple(window_starts(size, window))


def window_grid(
    height: int, width: int, crop_h: int, crop_w: int, pad: str = "crop", max_window: int | None = None
) -> WindowGrid:
    """The windows of an image.

    ``pad="crop"`` is the original: an image side shorter than the crop is centred and padded (mean pixel) up to it;
    a longer side gets crop-sized windows with stride ``ceil(2/3 crop)``. ``pad="minimal"`` pads a shorter side only
    as far as the stride-32 alignment needs (:data:`PAD_PHASE`; e.g. 393 instead of 713 pixels around 360), and with
    ``max_window`` a side of up to ``max_window`` pixels is one window instead of overlapping crops.
    """
    win_h, ys = _axis(height, crop_h, pad, max_window)
    win_w, xs = _axis(width, crop_w, pad, max_window)
    return WindowGrid(height, width, win_h, win_w, ys, xs)


@dataclass
class WindowOutput:
    """The network output of one window: the rows of it that the image part of the window reads.

    ``values`` (P, K, a, w') is rows ``row0:row0+a`` of the full (P, K, ``full_h``, w') output, one plane per pass:
    the window, then its flip as the network produced it (flipped back after upsampling, as the original does).
    With ``probabilities`` (the low-resolution head) ``values`` is one plane (1, C, a, w') of flip-averaged
    probabilities in the output taxonomy, and ``top`` its ``TOP_K`` most likely classes per pixel
    (:meth:`ScaleMap.candidates`).
    """

    y: int
    x: int
    values: torch.Tensor
    row0: int
    full_h: int
    probabilities: bool = False
    top: torch.Tensor | None = None


#: Classes per low-resolution pixel that :meth:`ScaleMap.candidates` keeps.
TOP_K = 2


def window_output(values: torch.Tensor, grid: WindowGrid, y: int, x: int, probabilities: bool) -> WindowOutput:
    """Keep the rows of a window's network output (P, K, h', w') that the image rows of the window read."""
    full_h = values.shape[-2]
    rows = (max(0, -y), min(grid.win_h, grid.height - y))
    r0, r1 = rows if full_h == grid.win_h else source_span(full_h, grid.win_h, *rows, align_corners=True)
    values = values[:, :, r0:r1].clone()
    out = WindowOutput(y, x, values, r0, full_h, probabilities)
    if probabilities and values.shape[1] > 2 * TOP_K:
        out.top = values[0].topk(TOP_K, dim=0).indices
    return out


class ScaleMap:
    """Probabilities (C, height, width) of one resized image, computed on demand for a band of rows.

    ``to_probs`` turns upsampled logits (P, K, r, c) into probabilities (P, C, r, c): softmax, then the linear map
    to the output taxonomy when there is one.
    """

    def __init__(
        self,
        grid: WindowGrid,
        outputs: list[WindowOutput],
        num_classes: int,
        to_probs: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        self.grid = grid
        self.outputs = outputs
        self.num_classes = num_classes
        self.to_probs = to_probs
        self.height, self.width = grid.height, grid.width
        # The windows form a full grid, so the count of windows covering (y, x) is rows(y) * cols(x).
        device = outputs[0].values.device
        self._row_count = self._coverage(grid.height, grid.ys, grid.win_h).to(device)
        self._col_count = self._coverage(grid.width, grid.xs, grid.win_w).to(device)
        self._cache: tuple[int, int, torch.Tensor] | None = None

    @staticmethod
    def _coverage(size: int, starts: tuple[int, ...], window: int) -> torch.Tensor:
        count = torch.zeros(size, dtype=torch.float32)
        for s in starts:
            count[max(0, s) : min(size, s + window)] += 1
        return count

    @property
    def has_candidates(self) -> bool:
        """True when :meth:`candidates` is available (low-resolution head with many classes)."""
        return all(out.top is not None for out in self.outputs)

    def rows(self, r0: int, r1: int) -> torch.Tensor:
        """Rows ``r0:r1`` of the map, (C, r1 - r0, width) float32; rows shared with the previous call are reused."""
        band = None
        if self._cache is not None:
            c0, c1, cached = self._cache
            if c0 <= r0 and r1 <= c1:
                return cached[:, r0 - c0 : r1 - c0]
            if c0 <= r0 < c1:  # bands move down the image: compute only the rows not seen yet
                band = torch.cat([cached[:, r0 - c0 :], self._compute(c1, r1)], dim=1)
        if band is None:
            band = self._compute(r0, r1)
        self._cache = (r0, r1, band)
        return band

    def candidates(self, r0: int, r1: int) -> torch.Tensor:
        """The classes that are among the ``TOP_K`` most likely at some low-resolution pixel read by rows r0:r1."""
        found = [out.top[:, a:b].reshape(-1) for out, (a, b) in self._overlaps(r0, r1) if out.top is not None]
        return torch.unique(torch.cat(found))

    def bounded_rows(self, r0: int, r1: int, classes: torch.Tensor) -> torch.Tensor:
        """Rows r0:r1 of the map for ``classes`` only, plus a last channel that no other class exceeds.

        The last channel is, at each low-resolution pixel, the largest probability of the classes left out, resized
        and averaged like the others: resizing and averaging are convex combinations, so at every output pixel no
        class outside ``classes`` exceeds it.
        """
        return self._compute(r0, r1, classes)

    def _overlaps(self, r0: int, r1: int) -> list[tuple[WindowOutput, tuple[int, int]]]:
        """Windows that rows r0:r1 touch, with the rows of their stored values those rows read."""
        g = self.grid
        found = []
        for out in self.outputs:
            y0, y1 = max(r0, out.y), min(r1, out.y + g.win_h)
            if y0 < y1:
                lo, hi = (y0 - out.y, y1 - out.y)
                if out.full_h != g.win_h:
                    lo, hi = source_span(out.full_h, g.win_h, lo, hi, align_corners=True)
                found.append((out, (lo - out.row0, hi - out.row0)))
        return found

    def _compute(self, r0: int, r1: int, classes: torch.Tensor | None = None) -> torch.Tensor:
        g = self.grid
        device = self.outputs[0].values.device
        channels = self.num_classes if classes is None else len(classes) + 1
        acc = torch.zeros((channels, r1 - r0, g.width), dtype=torch.float32, device=device)
        left_out = None
        if classes is not None:
            left_out = torch.ones(self.num_classes, dtype=torch.bool, device=device)
            left_out[classes] = False
        for out in self.outputs:  # row-major, as the original adds them
            y0, y1 = max(r0, out.y), min(r1, out.y + g.win_h)
            x0, x1 = max(0, out.x), min(g.width, out.x + g.win_w)
            if y0 >= y1 or x0 >= x1:
                continue
            rows = (y0 - out.y, y1 - out.y)
            values, row0 = out.values, out.row0
            if classes is not None:  # only the rows read, then the classes and the bound of the others
                lo, hi = rows if out.full_h == g.win_h else source_span(out.full_h, g.win_h, *rows, align_corners=True)
                values, row0 = values[:, :, lo - row0 : hi - row0], lo
                rest = values[:, left_out].amax(dim=1, keepdim=True) if bool(left_out.any()) else values[:, :1] * 0
                values = torch.cat([values[:, classes], rest], dim=1)
            acc[:, y0 - r0 : y1 - r0, x0:x1] += self._window_probs(out, values, row0, rows, (x0 - out.x, x1 - out.x))
        return acc.div_(self._row_count[r0:r1, None] * self._col_count[None, :])

    def _window_probs(
        self, out: WindowOutput, values: torch.Tensor, row0: int, rows: tuple[int, int], cols: tuple[int, int]
    ) -> torch.Tensor:
        """Probabilities (C, r, c) of pixels ``rows x cols`` of one window (window coordinates); ``values`` holds
        rows ``row0:`` of the window's network output."""
        g = self.grid
        if out.full_h == g.win_h and values.shape[-1] == g.win_w:  # the output has the window's size
            block = values[:, :, rows[0] - row0 : rows[1] - row0]
        else:  # (the low-resolution head stores float16 probabilities: upsampled in float32)
            block = upsample_rows(values, row0, out.full_h, (g.win_h, g.win_w), rows)
        c0, c1 = cols
        if out.probabilities:  # one plane, already flip-averaged
            return block[0, ..., c0:c1].float()
        probs = self.to_probs(block[:1, ..., c0:c1].float())[0]
        if block.shape[0] == 1:
            return probs
        # The flipped window: the mirrored columns, flipped back after the softmax (a per-pixel operation, so the
        # same numbers as flipping the logits first) without copying the whole plane.
        width = block.shape[-1]
        flipped = self.to_probs(block[1:, ..., width - c1 : width - c0].float())[0].flip(-1)
        return (probs + flipped) / 2


def upsample_rows(
    values: torch.Tensor, row0: int, full_h: int, size: tuple[int, int], rows: tuple[int, int]
) -> torch.Tensor:
    """Rows ``rows`` of the bilinear ``align_corners=True`` resize of a (P, K, full_h, w') map to ``size``.

    ``values`` holds rows ``row0:`` of the map. The width is resized by ``F.interpolate`` itself (the original's
    operation, vectorised), then the needed rows are interpolated with PyTorch's own taps.
    """
    y0, y1, wy = linear_taps(full_h, size[0], True, rows[0], rows[1], device=values.device)
    lo, hi = int(y0.min()), int(y1.max()) + 1
    band = values[:, :, lo - row0 : hi - row0].float()
    p, k, n, w = band.shape
    wide = F.interpolate(band.reshape(p * k * n, 1, w), size=size[1], mode="linear", align_corners=True)
    wide = wide.reshape(p, k, n, size[1])
    top = wide.index_select(2, y0 - lo).mul_((1 - wy)[:, None])
    return top.add_(wide.index_select(2, y1 - lo).mul_(wy[:, None]))
