"""What a run reports: a CSV log (always), TensorBoard event files (when installed), and progress on rank 0.

``<out>/log.csv`` has one row per logged iteration: ``iter``, ``epoch`` (passes over the first dataset),
``loss``, ``lr``, ``images_per_s``, ``data_wait_s`` (seconds per step spent waiting for data), ``loss/<dataset>``
when several datasets train together, and the validation mIoU (``val_miou``, or ``val_miou/<dataset>``) on the
rows where validation ran. A resumed run first drops the rows after its checkpoint, so the file reads as one run.

TensorBoard event files go to ``<out>/tensorboard`` when ``torch.utils.tensorboard`` can be imported (it needs
the ``tensorboard`` package); the same scalars, with ``purge_step`` on resume. ``<out>/config.yaml`` is the
resolved config of the newest session. :class:`WindowStats` sums the logged values over the steps of a row.
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

import torch
import yaml
from torch import nn

from mseg_semantic.distributed import ProcessContext, all_reduce_sum
from mseg_semantic.fileio import write_bytes_atomic
from mseg_semantic.training.config import TrainConfig, config_to_dict
from mseg_semantic.training.data import PreparedDataset
from mseg_semantic.training.objectives import objective_columns, objective_summary

LOG_FILE = "log.csv"
CONFIG_FILE = "config.yaml"


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

    def show_row(self, iteration: int, row: dict[str, Any], lr: float) -> None:
        """A row of the log: with its loss, as :meth:`report`; with validation columns only, as a line."""
        if "loss" in row:
            val_text = "".join(f"  {k} {v:.4f}" for k, v in row.items() if k.startswith("val_miou"))
            self.report(iteration, row["loss"], lr, row["images_per_s"], val_text)
        elif any(k.startswith("val_miou") for k in row):
            self.write(f"iter {iteration}: " + "  ".join(f"{k} {v:.4f}" for k, v in row.items()))

    def write(self, message: str) -> None:
        if self._bar is not None:
            self._bar.write(message)
        else:
            self.log(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class WindowStats:
    """Loss sums since the last logged row, kept on the device (no sync per step), summed over processes.

    ``extras``: values of each step averaged like the loss (MGDA's weights, the CCSA loss), returned under the
    row's ``extras`` key in the order of :func:`~mseg_semantic.training.objectives.objective_columns`.
    """

    def __init__(self, num_datasets: int, ctx: ProcessContext, extras: int = 0) -> None:
        self.ctx, self.num_datasets, self.extras = ctx, num_datasets, extras
        self._reset()

    def _reset(self) -> None:
        d = self.num_datasets
        # [sum of step losses, steps, crops, per-dataset CE sums (d), per-dataset labelled pixels (d), extras]
        self.sums = torch.zeros(3 + 2 * d + self.extras, dtype=torch.float64, device=self.ctx.device)
        self.data_wait = 0.0
        self.clock = time.perf_counter()

    def add(
        self,
        loss: torch.Tensor,
        pixel_loss: torch.Tensor,
        valid: torch.Tensor,
        dataset_ids: torch.Tensor,
        crops: int,
        extras: torch.Tensor | None = None,
    ) -> None:
        """One step: its loss, per-pixel loss and counted pixels (N, H, W), each crop's dataset, its extras."""
        d = self.num_datasets
        self.sums[0] += loss.double()
        self.sums[1] += 1
        self.sums[2] += crops
        per_image_loss = pixel_loss.sum(dim=(1, 2)).double()
        per_image_pixels = valid.sum(dim=(1, 2)).double()
        self.sums[3 : 3 + d].index_add_(0, dataset_ids, per_image_loss)
        self.sums[3 + d : 3 + 2 * d].index_add_(0, dataset_ids, per_image_pixels)
        if extras is not None:
            self.sums[3 + 2 * d :] += extras

    def flush(self, iteration: int, lr: float, per_dataset: int, first_size: int, names: list[str]) -> dict[str, Any]:
        """The row of the steps since the last one (every process takes part); starts a new window."""
        d = self.num_datasets
        sums = all_reduce_sum(self.sums.clone()).cpu().numpy()
        seconds = time.perf_counter() - self.clock
        steps = sums[1] / self.ctx.world_size
        row: dict[str, Any] = {
            "epoch": iteration * per_dataset / first_size,
            "loss": float(sums[0] / max(sums[1], 1)),
            "lr": lr,
            "images_per_s": float(sums[2] / seconds) if seconds > 0 else 0.0,
            "data_wait_s": self.data_wait / max(steps, 1),
        }
        if d > 1:
            for i, name in enumerate(names):
                pixels = sums[3 + d + i]
                row[f"loss/{name}"] = float(sums[3 + i] / pixels) if pixels else float("nan")
        row["extras"] = [float(v / max(sums[1], 1)) for v in sums[3 + 2 * d :]]
        self._reset()
        return row


def validation_columns(results: dict[str, float], names: list[str]) -> dict[str, float]:
    """The mIoU columns of a validation: ``val_miou`` for one dataset, ``val_miou/<dataset>`` for several."""
    if len(names) == 1:
        return {"val_miou": results[names[0]]}
    return {f"val_miou/{name}": value for name, value in results.items()}


def log_columns(config: TrainConfig, names: list[str]) -> list[str]:
    """The CSV columns of a run of ``config``."""
    columns = ["iter", "epoch", "loss", "lr", "images_per_s", "data_wait_s"]
    if len(names) > 1:
        columns += [f"loss/{n}" for n in names]
    columns += objective_columns(config, names)
    if config.val.every:
        with_val = [d.name for d in config.datasets if d.val_list]
        columns += ["val_miou"] if len(names) == 1 else [f"val_miou/{n}" for n in with_val]
    return columns


def open_run_log(
    config: TrainConfig, out_dir: Path, names: list[str], start_iter: int, log: Callable[[str], None]
) -> RunLog:
    """Write the resolved ``config.yaml`` (noting settings a resume changed) and open ``log.csv``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    resolved = config_to_dict(config)
    config_path = out_dir / CONFIG_FILE
    if start_iter > 0 and config_path.is_file():
        earlier = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
        changed = sorted(_changed_keys(earlier, resolved))
        if changed:
            log(f"note: resuming with changed settings: {', '.join(changed)}")
    config_path.write_text(yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
    return RunLog(out_dir, log_columns(config, names), start_iter)


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [c for k in keys for c in _changed_keys(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [prefix.rstrip(".")]


def log_location(run_log: RunLog, out_dir: Path) -> str:
    """Where the run's log (and TensorBoard events) go, as a start-up line."""
    if run_log.tensorboard is not None:
        return f"log: {run_log.path}, TensorBoard events in {out_dir / 'tensorboard'}"
    return f"log: {run_log.path} (TensorBoard event files too once the tensorboard package is installed)"


def plan_summary(
    config: TrainConfig,
    datasets: Sequence[PreparedDataset],
    model: nn.Module,
    ctx: ProcessContext,
    max_iters: int,
    out_dir: Path,
) -> str:
    """The start-up lines of a fresh run: the model, the data, the steps, what they minimise."""
    sizes = ", ".join(f"{d.config.name} ({len(d.train)} images)" for d in datasets)
    params = sum(p.numel() for p in model.parameters())
    per_dataset = config.batch_size // len(datasets)
    return (
        f"training {model.arch} ({params / 1e6:.2f}M parameters, {config.num_classes} classes, "
        f"{config.model_taxonomy} taxonomy) on {sizes}\n"
        f"{max_iters} iterations of {config.batch_size} crops {config.transform.crop[0]}x{config.transform.crop[1]} "
        f"({per_dataset} per dataset per step, {config.batch_size // ctx.world_size} per process x "
        f"{ctx.world_size} process(es) on {ctx.device}, {config.precision}); output in {out_dir}"
        f"{objective_summary(config, len(datasets))}"
    )
