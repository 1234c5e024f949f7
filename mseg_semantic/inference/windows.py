"""Sliding windows of one scale, and that scale's probability map evaluated lazily in bands of rows.

The original adds every window's probabilities into a padded (C, H, W) accumulator and divides by a count
map. Here each window keeps only the network output it needs (HRNet's stride-4 logits, cropped to the part of
the window that is image, not padding) and :class:`ScaleMap` computes any band of rows on demand with the same
arithmetic: upsample (align_corners=True), softmax, projection, flip average, sum over the covering windows in
the original order, divide by their count. So a full-resolution 194-channel map of a scale never exists, and the
padding's probabilities, which the original computes and throws away, are never computed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from mseg_semantic.inference.geometry import resize_block, source_span, window_starts


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
    """The network output of one window, cropped to what the image part of the window needs.

    ``planes`` holds one (K, a, b) tensor per pass (the window, then its flip): block ``[row0:row0+a,
    col0:col0+b]`` of the full (``full_h``, ``full_w``) network output. The flip's plane is the flipped window's
    output as the network produced it (not flipped back), read with mirrored columns. ``probabilities`` is True
    when ``planes`` is a single map already turned into flip-averaged probabilities (the low-resolution head).
    """

    y: int
    x: int
    planes: list[torch.Tensor]
    offsets: list[tuple[int, int]]
    full_h: int
    full_w: int
    probabilities: bool = False


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
        device = outputs[0].planes[0].device
        self._row_count = self._coverage(grid.height, grid.ys, grid.win_h).to(device)
        self._col_count = self._coverage(grid.width, grid.xs, grid.win_w).to(device)
        self._cache: tuple[int, int, torch.Tensor] | None = None

    @staticmethod
    def _coverage(size: int, starts: tuple[int, ...], window: int) -> torch.Tensor:
        count = torch.zeros(size, dtype=torch.float32)
        for s in starts:
            count[max(0, s) : min(size, s + window)] += 1
        return count

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

    def _compute(self, r0: int, r1: int) -> torch.Tensor:
        g = self.grid
        device = self.outputs[0].planes[0].device
        acc = torch.zeros((self.num_classes, r1 - r0, g.width), dtype=torch.float32, device=device)
        for out in self.outputs:  # row-major, as the original adds them
            y0, y1 = max(r0, out.y), min(r1, out.y + g.win_h)
            x0, x1 = max(0, out.x), min(g.width, out.x + g.win_w)
            if y0 >= y1 or x0 >= x1:
                continue
            probs = self._window_probs(out, (y0 - out.y, y1 - out.y), (x0 - out.x, x1 - out.x))
            acc[:, y0 - r0 : y1 - r0, x0:x1] += probs
        return acc.div_(self._row_count[r0:r1, None] * self._col_count[None, :])

    def _window_probs(self, out: WindowOutput, rows: tuple[int, int], cols: tuple[int, int]) -> torch.Tensor:
        """Probabilities (C, r, c) of pixels ``rows x cols`` of one window (window coordinates)."""
        g = self.grid
        full, size = (out.full_h, out.full_w), (g.win_h, g.win_w)
        values = []
        for index, (plane, offset) in enumerate(zip(out.planes, out.offsets, strict=True)):
            mirror = index == 1
            if full == size:  # the model's output has the window's size: nothing to resample
                c = (size[1] - cols[1], size[1] - cols[0]) if mirror else cols
                block = plane[:, rows[0] - offset[0] : rows[1] - offset[0], c[0] - offset[1] : c[1] - offset[1]]
                values.append(block.flip(-1) if mirror else block)
            else:
                values.append(resize_block(plane, full, size, rows, cols, offset, align_corners=True, mirror=mirror))
        if out.probabilities:
            return values[0]
        probs = self.to_probs(torch.stack(values).float())
        if len(values) == 2:
            return (probs[0] + probs[1]) / 2
        return probs[0]


def crop_output(
    logits: torch.Tensor, grid: WindowGrid, y: int, x: int, mirror_second: bool
) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
    """The blocks of a window's network output (P, K, h', w') that its image pixels read (see :class:`WindowOutput`)."""
    full_h, full_w = logits.shape[-2:]
    rows = (max(0, -y), min(grid.win_h, grid.height - y))
    cols = (max(0, -x), min(grid.win_w, grid.width - x))
    same = (full_h, full_w) == (grid.win_h, grid.win_w)
    planes, offsets = [], []
    for index in range(logits.shape[0]):
        mirror = mirror_second and index == 1
        if same:
            ry = rows
            rx = (grid.win_w - cols[1], grid.win_w - cols[0]) if mirror else cols
        else:
            ry = source_span(full_h, grid.win_h, rows[0], rows[1], align_corners=True)
            rx = source_span(full_w, grid.win_w, cols[0], cols[1], align_corners=True, mirror=mirror)
        planes.append(logits[index, :, ry[0] : ry[1], rx[0] : rx[1]].clone())
        offsets.append((ry[0], rx[0]))
    return planes, offsets
