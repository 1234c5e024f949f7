"""Evaluate a model on a split list: predictions saved as PNGs, one confusion matrix, metrics and a report.

Outputs in ``out_dir``: ``gray/<name>.png`` (predictions, lossless; ``<name>`` is the image stem, or its path
relative to the data root joined with '_' when stems repeat, as ScanNet's do), ``metrics.json``, ``results.txt``
(the original's format), ``report.md``, ``per_class_iou.png`` and ``confusion_matrix.png``.

Existing predictions are reused with ``resume=True``, so a long evaluation can be interrupted and continued.
Under ``torchrun`` each process predicts a shard of the list (images ``rank::world_size``) and the confusion
matrices are summed exactly (int64) before rank 0 writes the results. A sample that cannot be read (missing or
corrupt file, label of the wrong size or with values outside the taxonomy) is reported with its list line; the
other predictions are still made and kept, and no metrics are written. :func:`evaluate` reads as its steps (checks,
this process's shard, the gather over processes, the reports); the work on one sample (predict or reuse, convert,
score) is :class:`_Scorer`'s.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from mseg_semantic import distributed
from mseg_semantic.data import ListEntry, read_sample
from mseg_semantic.data.dataset import read_entry_label
from mseg_semantic.errors import InputError, MsegError
from mseg_semantic.evaluation.metrics import ConfusionMatrix
from mseg_semantic.evaluation.plan import EvaluationPlan, apply_relabeled_rules
from mseg_semantic.evaluation.plots import confusion_matrix_image, per_class_iou_chart
from mseg_semantic.fileio import read_label, write_bytes_atomic, write_label
from mseg_semantic.taxonomy import TaxonomyConverter


@dataclass
class EvaluationResult:
    metrics: dict[str, Any] | None  # None when some samples failed
    failures: list[str] = field(default_factory=list)
    predicted: int = 0
    reused: int = 0
    seconds: float = 0.0


def prediction_names(entries: Sequence[ListEntry]) -> list[str]:
    """Unique output names: the image stems, or '_'-joined relative paths when stems repeat."""
    stems = [e.image.stem for e in entries]
    if len(set(stems)) == len(stems):
        return stems
    counts = Counter(stems)
    common = Path(os.path.commonpath([str(e.image.parent) for e in entries]))
    names = []
    for entry, stem in zip(entries, stems, strict=True):
        if counts[stem] == 1:
            names.append(stem)
            continue
        try:
            rel = entry.image.with_suffix("").relative_to(common)
        except ValueError:
            rel = entry.image.with_suffix("")
        names.append("_".join(rel.parts))
    if len(set(names)) != len(names):
        raise InputError("the list names the same image twice; predictions would overwrite each other")
    return names


def evaluate(
    predict: Callable[[np.ndarray], np.ndarray],
    entries: Sequence[ListEntry],
    plan: EvaluationPlan,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    info: dict[str, Any] | None = None,
    relabeled_entries: Sequence[ListEntry] | None = None,
) -> EvaluationResult:
    """Predict (or reuse) every entry's label map, score it against the ground truth, write the results.

    ``predict`` maps an RGB uint8 image to a label map in ``plan.eval_taxonomy`` (e.g. ``Segmenter.predict``).
    ``info`` is recorded in metrics.json (model, config, ...). ``relabeled_entries`` (relabeled evaluation) is the
    relabeled list of the same images, in the same order. Returns the metrics dict (rank 0, or None on failures)
    and what was done.
    """
    if (relabeled_entries is None) != (plan.relabeled is None):
        raise InputError("relabeled evaluation needs both a relabeled plan and the relabeled list")
    if relabeled_entries is not None:
        _check_same_images(entries, relabeled_entries)
    out = Path(out_dir)
    names = prediction_names(entries)
    if not resume:
        _check_no_predictions(out / "gray", names)
    distributed.barrier()  # every process has looked before any writes: a fast one must not trip a slow one's check
    scorer = _Scorer(predict, plan, resume, relabeled_entries)
    start = time.perf_counter()
    shard = list(range(distributed.rank(), len(entries), distributed.world_size()))
    bar = tqdm(shard, desc=f"eval {plan.dataset}", unit="img", disable=not progress or not distributed.is_main())
    for index in bar:
        entry = entries[index]
        try:
            scorer.score(index, entry, out / "gray" / f"{names[index]}.png")
        except MsegError as exc:
            message = str(exc) if entry.source in str(exc) else f"{entry.source}: {exc}"
            scorer.result.failures.append(message)
            (bar.write if progress else print)(f"failed: {message}")
    result, cm = scorer.gather()
    result.seconds = time.perf_counter() - start
    if result.failures or not distributed.is_main():
        return result
    result.metrics = metrics_dict(cm, plan, len(entries), info or {})
    write_reports(out, result.metrics, cm, plan)
    return result


def _check_no_predictions(gray: Path, names: Sequence[str]) -> None:
    """Without ``resume``, no prediction may exist yet: they would be overwritten, or mixed with an older run's."""
    existing = [n for n in names if (gray / f"{n}.png").exists()]
    if existing:
        raise InputError(
            f"{gray}: {len(existing)} prediction(s) already exist; pass --resume to reuse them or choose another --out"
        )


class _Scorer:
    """Adds the samples of this process to one confusion matrix: each prediction made (and saved) or reused, and
    scored in the evaluation taxonomy (with the relabeled rules in a relabeled evaluation)."""

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        plan: EvaluationPlan,
        resume: bool,
        relabeled_entries: Sequence[ListEntry] | None,
    ) -> None:
        self.predict, self.plan, self.resume, self.relabeled_entries = predict, plan, resume, relabeled_entries
        self.num_classes = len(plan.eval_classes)
        self.converter = TaxonomyConverter()
        self.cm = ConfusionMatrix(self.num_classes)
        self.result = EvaluationResult(metrics=None)

    def score(self, index: int, entry: ListEntry, pred_path: Path) -> None:
        plan = self.plan
        image, label = read_sample(entry, plan.label_taxonomy)
        pred = self._prediction(image, label.shape, pred_path)
        if plan.maps_labels:
            label = self.converter.convert_labels(label, plan.dataset, plan.eval_taxonomy)
        if pred.shape != label.shape:
            raise InputError(f"{entry.source}: prediction {pred.shape} and label {label.shape} differ in size")
        if self.relabeled_entries is not None and plan.relabeled is not None:
            relabeled = read_entry_label(self.relabeled_entries[index], label.shape, plan.relabeled)
            relabeled = self.converter.convert_labels(relabeled, plan.relabeled, plan.eval_taxonomy)
            pred, label = apply_relabeled_rules(pred, label, relabeled)
        self.cm.update(pred, label)

    def _prediction(self, image: np.ndarray, shape: tuple[int, ...], path: Path) -> np.ndarray:
        """The saved prediction (with ``resume``, when it is readable and fits), else a new one, saved."""
        pred = _reuse(path, shape, self.num_classes) if self.resume and path.exists() else None
        if pred is None:
            pred = np.asarray(self.predict(image))
            write_label(path, pred)
            self.result.predicted += 1
        else:
            self.result.reused += 1
        return pred

    def gather(self) -> tuple[EvaluationResult, ConfusionMatrix]:
        """The confusion matrices of all processes summed exactly, and their failures and counts."""
        result, cm = self.result, self.cm
        cm.load_state(distributed.all_reduce_sum(cm.state()))
        gathered = distributed.all_gather_objects((result.failures, result.predicted, result.reused))
        result.failures = [f for failures, _, _ in gathered for f in failures]
        result.predicted = sum(p for _, p, _ in gathered)
        result.reused = sum(r for _, _, r in gathered)
        return result, cm


def _check_same_images(entries: Sequence[ListEntry], relabeled: Sequence[ListEntry]) -> None:
    """The original zips the two lists blindly; we check that line i names the same image in both."""
    if len(entries) != len(relabeled):
        raise InputError(f"the relabeled list has {len(relabeled)} entries, the list {len(entries)}")
    for a, b in zip(entries, relabeled, strict=True):
        if a.image.name != b.image.name:
            raise InputError(f"{b.source}: names image {b.image.name} but {a.source} names {a.image.name}")


def _reuse(path: Path, shape: tuple[int, ...], num_classes: int) -> np.ndarray | None:
    """An earlier prediction, if it is readable and fits; else None (it is then recomputed)."""
    try:
        pred = read_label(path)
    except InputError:
        return None
    if pred.shape != shape or pred.ndim != 2 or (pred.size and int(pred.max()) >= num_classes):
        return None
    return pred


def metrics_dict(cm: ConfusionMatrix, plan: EvaluationPlan, num_images: int, info: dict[str, Any]) -> dict[str, Any]:
    names = plan.eval_classes
    m = cm.metrics(plan.excluded)
    matrix = cm.matrix
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - np.diag(matrix)
    per_class = {
        name: (None if union[i] == 0 else round(100 * float(m.iou[i]), 4))
        for i, name in enumerate(names)
        if m.included[i]
    }
    return {
        "dataset": plan.dataset,
        "taxonomy": plan.eval_taxonomy,
        "model_taxonomy": plan.model_taxonomy,
        "regime": plan.regime,
        "num_images": num_images,
        "num_classes": int(m.included.sum()),
        "mIoU": round(100 * m.mean_iou, 4),
        "mIoU_present_classes": round(100 * m.mean_iou_present, 4),
        "mean_accuracy": round(100 * m.mean_accuracy, 4),
        "pixel_accuracy": round(100 * m.pixel_accuracy, 4),
        "per_class_iou": per_class,
        "excluded_classes": [names[i] for i in plan.excluded],
        "class_names": list(names),
        "confusion_matrix": matrix.tolist(),
        "predictions_outside_taxonomy": cm.outside.tolist(),
        "metric_notes": "mIoU: mean over all scored classes, absent classes count as 0 (the original convention); "
        "mIoU_present_classes: mean over classes present in the ground truth; percentages",
        **info,
    }


def write_reports(out: Path, metrics: dict[str, Any], cm: ConfusionMatrix, plan: EvaluationPlan) -> None:
    """metrics.json, results.txt (the original's format), report.md and the two plots."""
    write_bytes_atomic(out / "metrics.json", (json.dumps(metrics, indent=2, ensure_ascii=False) + "\n").encode())
    m = cm.metrics(plan.excluded)
    names = plan.eval_classes
    lines = [f"Eval result: mIoU/mAcc/allAcc {m.mean_iou:.4f}/{m.mean_accuracy:.4f}/{m.pixel_accuracy:.4f}."]
    lines += [
        f"Class_{i:02d} result: iou/accuracy {m.iou[i]:.4f}/{m.accuracy[i]:.4f}, name: {names[i]}."
        for i in range(len(names))
        if m.included[i]
    ]
    write_bytes_atomic(out / "results.txt", ("\n".join(lines) + "\n").encode())
    included = [i for i in range(len(names)) if m.included[i]]
    per_class = metrics["per_class_iou"]
    rows = [f"| {names[i]} | {'n/a' if per_class[names[i]] is None else f'{per_class[names[i]]:.2f}'} | "
            f"{100 * m.accuracy[i]:.2f} | {int(cm.matrix[i].sum())} |" for i in included]  # fmt: skip
    model = metrics.get("model", "model")
    report = [
        f"# {model} on {plan.dataset}",
        "",
        f"Regime: {plan.regime} (model taxonomy `{plan.model_taxonomy}`, scored in `{plan.eval_taxonomy}`); "
        f"{metrics['num_images']} images; settings: `{metrics.get('config', {}).get('name', '')}`.",
        "",
        "| metric | value (%) |",
        "|---|---|",
        f"| mIoU (all {len(included)} classes, absent = 0) | {metrics['mIoU']:.2f} |",
        f"| mIoU (classes present in the ground truth) | {metrics['mIoU_present_classes']:.2f} |",
        f"| mean class accuracy | {metrics['mean_accuracy']:.2f} |",
        f"| pixel accuracy | {metrics['pixel_accuracy']:.2f} |",
        "",
    ]
    if plan.excluded:
        report += [f"{len(plan.excluded)} classes the dataset cannot produce are excluded from the means.", ""]
    report += ["| class | IoU | accuracy | ground-truth pixels |", "|---|---|---|---|", *rows, "",
               "![per-class IoU](per_class_iou.png)", "", "![confusion matrix](confusion_matrix.png)", ""]  # fmt: skip
    write_bytes_atomic(out / "report.md", "\n".join(report).encode())
    title = f"{model} on {plan.dataset}: mIoU {metrics['mIoU']:.2f}"
    chart = per_class_iou_chart([names[i] for i in included], [per_class[names[i]] for i in included], title)
    _write_png(out / "per_class_iou.png", chart)
    matrix = cm.matrix[np.ix_(included, included)]
    _write_png(out / "confusion_matrix.png", confusion_matrix_image(matrix, [names[i] for i in included], title))


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise InputError(f"{path}: PNG encoding failed")
    write_bytes_atomic(path, data.tobytes())
