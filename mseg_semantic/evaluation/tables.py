"""The paper's result tables: rows = models, columns = datasets, and the harmonic mean across datasets.

Several ``metrics.json`` for the same model and dataset (e.g. base sizes 360, 720 and 1080) are combined by
taking the maximum, as the paper's tables do.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mseg_semantic.errors import InputError

ZERO_SHOT_ORDER = ("voc2012", "pascal-context-60", "camvid-11", "wilddash-19", "kitti-19", "scannet-20")
TRAINING_ORDER = (
    "coco-panoptic-133", "ade20k-150", "mapillary-public65", "idd-39", "bdd", "cityscapes-19", "sunrgbd-37",
)  # fmt: skip


@dataclass(frozen=True)
class ResultTable:
    models: list[str]
    datasets: list[str]
    cells: dict[tuple[str, str], float]  # (model, dataset) -> mIoU percent
    sources: dict[tuple[str, str], list[str]]

    def harmonic_mean(self, model: str) -> float | None:
        """n / sum(1/x) over the datasets of the table; None when a dataset is missing for the model."""
        values = [self.cells.get((model, d)) for d in self.datasets]
        if any(v is None for v in values):
            return None
        if any(v == 0 for v in values):
            return 0.0
        return len(values) / sum(1.0 / v for v in values)  # type: ignore[operator]

    def rows(self) -> list[dict[str, float | str | None]]:
        out: list[dict[str, float | str | None]] = []
        for model in self.models:
            row: dict[str, float | str | None] = {"model": model}
            row.update({d: self.cells.get((model, d)) for d in self.datasets})
            row["harmonic_mean"] = self.harmonic_mean(model)
            out.append(row)
        return out

    def to_markdown(self) -> str:
        header = ["model", *self.datasets, "h. mean"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in self.rows():
            cells = [str(row["model"])] + [_fmt(row[d]) for d in [*self.datasets, "harmonic_mean"]]  # type: ignore[arg-type]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["model", *self.datasets, "harmonic_mean"])
        for row in self.rows():
            writer.writerow([row["model"]] + ["" if row[k] is None else f"{row[k]:.4f}"
                                              for k in [*self.datasets, "harmonic_mean"]])  # fmt: skip
        return buffer.getvalue()

    def to_json(self) -> str:
        return json.dumps({"datasets": self.datasets, "rows": self.rows()}, indent=2) + "\n"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def find_metrics(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """metrics.json files: the paths themselves, or found recursively in folders."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found += sorted(path.rglob("metrics.json"))
        else:
            raise InputError(f"{path}: no such file or folder")
    if not found:
        raise InputError("no metrics.json found in " + ", ".join(str(p) for p in paths))
    return found


def collect(paths: Iterable[str | os.PathLike]) -> ResultTable:
    """Read metrics.json files into a table (max over repeated model/dataset pairs)."""
    cells: dict[tuple[str, str], float] = {}
    sources: dict[tuple[str, str], list[str]] = {}
    models: list[str] = []
    datasets: list[str] = []
    for path in find_metrics(paths):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            model, dataset, miou = str(data["model"]), str(data["dataset"]), float(data["mIoU"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InputError(f"{path}: not a metrics.json written by 'mseg eval' ({exc})") from None
        key = (model, dataset)
        cells[key] = max(miou, cells.get(key, float("-inf")))
        sources.setdefault(key, []).append(str(path))
        if model not in models:
            models.append(model)
        if dataset not in datasets:
            datasets.append(dataset)
    order = [*ZERO_SHOT_ORDER, *TRAINING_ORDER]
    datasets.sort(key=lambda d: (order.index(d) if d in order else len(order), d))
    return ResultTable(models, datasets, cells, sources)
