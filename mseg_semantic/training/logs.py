"""What a run reports: a CSV log (always), TensorBoard event files (when installed), and progress on rank 0.

``<out>/log.csv`` has one row per logged iteration: ``iter``, ``epoch`` (passes over the first dataset),
``loss``, ``lr``, ``images_per_s``, ``data_wait_s`` (seconds per step spent waiting for data), ``loss/<dataset>``
when several datasets train together, and the validation mIoU (``val_miou``, or ``val_miou/<dataset>``) on the
rows where validation ran. A resumed run first drops the rows after its checkpoint, so the file reads as one run.

TensorBoard event files go to ``<out>/tensorboard`` when ``torch.utils.tensorboard`` can be imported (it needs
the ``tensorboard`` package); the same scalars, with ``purge_step`` on resume.
"""

from __future__ import annotations

import csv
import io
import math
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mseg_semantic.fileio import write_bytes_atomic

LOG_FILE = "log.csv"


class RunLog:
    """Appends rows to ``log.csv`` (and TensorBoard); opened with the iteration the run (re)starts from."""

    def __init__(self, folder: Path, columns: Sequence[str], start_iter: int) -> None:
        self.path = folder / LOG_FILE
        self.columns = list(columns)
        kept: list[dict[str, str]] = []
        if self.path.is_file() and start_iter > 0:
            with self.path.open(newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                old_columns = list(reader.fieldnames or [])
                kept = [row for row in reader if _iteration(row) <= start_iter]
            self.columns += [c for c in old_columns if c not in self.columns]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept)
        write_bytes_atomic(self.path, buffer.getvalue().encode("utf-8"))
        self._handle = self.path.open("a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._handle, fieldnames=self.columns, restval="", extrasaction="ignore")
        self.tensorboard = _tensorboard_writer(folder / "tensorboard", start_iter)

    def write(self, row: dict[str, Any]) -> None:
        self._writer.writerow({k: _format(v) for k, v in row.items()})
        self._handle.flush()
        if self.tensorboard is not None:
            for key, value in row.items():
                if key != "iter" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tensorboard.add_scalar(key, value, global_step=row["iter"])
            self.tensorboard.flush()

    def close(self) -> None:
        self._handle.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _iteration(row: dict[str, str]) -> float:
    try:
        return float(row.get("iter") or "inf")
    except ValueError:
        return math.inf


def _format(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def _tensorboard_writer(folder: Path, start_iter: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # the tensorboard package is optional
        return None
    return SummaryWriter(log_dir=str(folder), purge_step=start_iter if start_iter > 0 else None)


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """A tqdm bar (loss, LR, speed, ETA) on a terminal; otherwise one text line per logged row."""

    def __init__(self, start: int, total: int, enabled: bool, log: Callable[[str], None]) -> None:
        self.total, self.log = total, log
        self.enabled = enabled
        self._bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=start, unit="it", dynamic_ncols=True, smoothing=0.05)
        self._clock = time.perf_counter()
        self._start = start

    def step(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def report(self, iteration: int, loss: float, lr: float, images_per_s: float, extra: str = "") -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(f"loss {loss:.4f} lr {lr:.2e} {images_per_s:.1f} img/s{extra}", refresh=False)
            return
        done = iteration - self._start
        elapsed = time.perf_counter() - self._clock
        eta = elapsed / done * (self.total - iteration) if done else math.inf
        self.log(
            f"iter {iteration}/{self.total}  loss {loss:.4f}  lr {lr:.3e}  {images_per_s:.2f} img/s  "
            f"eta {format_duration(eta)}{extra}"
        )

    def write(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message)
        else:
            self.log(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
