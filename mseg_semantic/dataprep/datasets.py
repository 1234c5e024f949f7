"""The 13 MSeg datasets as data: where each lives, which conversions prepare it, which tasks relabel it.

A dataset is prepared by a short *chain* of stages, each turning one list's label files into another list's
(e.g. ``coco-panoptic-inst-201`` panoptic PNGs -> ``coco-panoptic-201`` semantic labels -> ``coco-panoptic-133``).
The split lists that name every file ship with the package (:mod:`mseg_semantic.data.lists`); lines of the lists of
one chain are aligned (line *i* of each names the same image), which is how the original pairs them.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from mseg_semantic.data.lists import DATASET_FOLDERS
from mseg_semantic.errors import InputError
from mseg_semantic.locks import exclusive

SPLITS = ("train", "val")
"""Only the train and val splits are prepared and relabeled (as in the original)."""


@dataclass(frozen=True)
class Stage:
    """One conversion: labels of taxonomy ``source`` -> labels of ``target``.

    ``kind``: ``remap`` (lookup table), ``rgb`` (colour-coded labels decoded, then the table), ``coco`` (panoptic
    PNG + JSON -> semantic ids), ``idd`` (polygon JSON -> ids), ``mat`` (PASCAL-Context ``.mat`` -> ids). For the
    last two ``source`` is None: the input file is found next to (or from the name of) the output.
    """

    source: str | None
    target: str
    kind: str


@dataclass(frozen=True)
class DatasetSpec:
    """Everything ``mseg data`` knows about one dataset."""

    name: str
    top: str  # folder under ROOT that download/extraction fill (``ADE20K``, ``BDD``, ...)
    semseg: str  # taxonomy of the prepared labels (what training/evaluation read)
    stages: tuple[Stage, ...]
    relabel: tuple[str, ...] = ()  # taxonomies X relabeled to X-relabeled (training datasets only)
    check_from: bool = False  # relabel: mask pixels must hold the record's `from` class (the original's strict)
    role: str = "test"

    @property
    def list_root(self) -> str:
        """Folder of the list paths, relative to ROOT."""
        return DATASET_FOLDERS[self.semseg]

    @property
    def chain(self) -> tuple[str, ...]:
        """Taxonomies whose lists name the files of one image, raw first (the source of the first stage)."""
        names = [s.target for s in self.stages]
        if self.stages and self.stages[0].source:
            names.insert(0, self.stages[0].source)
        return tuple(names) or (self.semseg,)


def _remap(source: str, target: str) -> tuple[Stage, ...]:
    return (Stage(source, target, "remap"),)


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("ade20k", "ADE20K", "ade20k-150", _remap("ade20k-151", "ade20k-150"), ("ade20k-150",),
                    False, "train"),
        DatasetSpec("bdd", "BDD", "bdd", (), ("bdd",), True, "train"),
        DatasetSpec("cityscapes", "Cityscapes", "cityscapes-19", _remap("cityscapes-34", "cityscapes-19"),
                    ("cityscapes-19", "cityscapes-34"), False, "train"),
        DatasetSpec("coco-panoptic", "COCOPanoptic", "coco-panoptic-133",
                    (Stage("coco-panoptic-inst-201", "coco-panoptic-201", "coco"),
                     Stage("coco-panoptic-201", "coco-panoptic-133", "remap")),
                    ("coco-panoptic-133",), True, "train"),
        DatasetSpec("idd", "IDD", "idd-39", (Stage(None, "idd-40", "idd"), Stage("idd-40", "idd-39", "remap")),
                    ("idd-39",), False, "train"),
        DatasetSpec("mapillary", "MapillaryVistasPublic", "mapillary-public65",
                    (Stage("mapillary-public66", "mapillary-public65", "rgb"),), ("mapillary-public65",), True,
                    "train"),
        DatasetSpec("sunrgbd", "SUNRGBD", "sunrgbd-37", _remap("sunrgbd-38", "sunrgbd-37"), ("sunrgbd-37",),
                    True, "train"),
        DatasetSpec("camvid", "Camvid", "camvid-11", (Stage("camvid-32", "camvid-11", "rgb"),)),
        DatasetSpec("kitti", "KITTI", "kitti-19", _remap("kitti-34", "kitti-19")),
        DatasetSpec("pascal-context", "PASCAL_Context", "pascal-context-60",
                    (Stage(None, "pascal-context-460", "mat"),
                     Stage("pascal-context-460", "pascal-context-60", "remap"))),
        DatasetSpec("scannet", "ScanNet", "scannet-20", _remap("scannet-41", "scannet-20")),
        DatasetSpec("voc2012", "PASCAL_VOC_2012", "voc2012", ()),
        DatasetSpec("wilddash", "WildDash", "wilddash-19", _remap("wilddash-34", "wilddash-19")),
    )
}  # fmt: skip
"""Training datasets first, then the test datasets, each in alphabetical order."""


def get_dataset(name: str) -> DatasetSpec:
    """The dataset called ``name`` (``ade20k``, ``coco-panoptic``, ...); unknown names raise with the known ones."""
    try:
        return DATASETS[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, DATASETS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InputError(f"unknown dataset {name!r}{hint}; known: {', '.join(DATASETS)}") from None


def relabeled(taxonomy: str) -> str:
    return f"{taxonomy}-relabeled"


LOCK_NAME = ".mseg-data.lock"
"""The lock file in each dataset folder, held by the ``mseg data`` step writing there (:mod:`mseg_semantic.locks`)."""


def dataset_lock(root: Path, spec: DatasetSpec, step: str) -> AbstractContextManager:
    """The lock of the dataset's folder below ROOT for one writing step (nothing to lock when it does not exist)."""
    folder = root / spec.top
    if not folder.is_dir():
        return nullcontext()
    return exclusive(folder / LOCK_NAME, f"mseg data {step} {spec.name}")
