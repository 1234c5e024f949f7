"""Split lists: ``image_path label_path`` per line, relative to a dataset root, and where each dataset lives.

The original split lists of every MSeg dataset ship with the package (``lists/<dataset>/<split>.txt.gz``); a user's
own list file in the same format works everywhere a dataset name does. Every problem is reported with the list
file and line number.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from mseg_semantic.errors import InputError
from mseg_semantic.taxonomy import get_taxonomy

# Folder of each dataset below an MSeg data root (``<root>/<folder>``), as the original mseg-api laid it out.
DATASET_FOLDERS: dict[str, str] = {
    **dict.fromkeys(["ade20k-151", "ade20k-150", "ade20k-150-relabeled"], "ADE20K/ADEChallengeData2016"),
    **dict.fromkeys(["bdd", "bdd-relabeled"], "BDD/bdd100k"),
    **dict.fromkeys(["camvid-11", "camvid-32"], "Camvid"),
    **dict.fromkeys(
        ["cityscapes-19", "cityscapes-19-relabeled", "cityscapes-34", "cityscapes-34-relabeled"], "Cityscapes"
    ),
    **dict.fromkeys(
        ["coco-panoptic-133", "coco-panoptic-133-relabeled", "coco-panoptic-201", "coco-panoptic-inst-201"],
        "COCOPanoptic",
    ),
    **dict.fromkeys(["idd-39", "idd-39-relabeled", "idd-40"], "IDD/IDD_Segmentation"),
    **dict.fromkeys(["kitti-19", "kitti-34"], "KITTI"),
    **dict.fromkeys(
        ["mapillary-public65", "mapillary-public65-relabeled", "mapillary-public66"], "MapillaryVistasPublic"
    ),
    **dict.fromkeys(["pascal-context-60", "pascal-context-460"], "PASCAL_Context"),
    **dict.fromkeys(["scannet-20", "scannet-41"], "ScanNet/scannet_frames_25k"),
    **dict.fromkeys(["sunrgbd-37", "sunrgbd-37-relabeled", "sunrgbd-38"], "SUNRGBD"),
    "voc2012": "PASCAL_VOC_2012",
    **dict.fromkeys(["wilddash-19", "wilddash-34"], "WildDash"),
}


@dataclass(frozen=True)
class ListEntry:
    """One sample of a split list: absolute image path, label path (None for image-only lists), where it came from."""

    image: Path
    label: Path | None
    source: str  # "<list file>:<line>", for error messages

    @property
    def stem(self) -> str:
        return self.image.stem


def _list_resource(dataset: str, split: str):
    return resources.files("mseg_semantic.data").joinpath("lists", dataset, f"{split}.txt.gz")


GENERATED_LISTS = "mseg_lists"
"""Folder (inside a dataset's folder) of the lists ``mseg data prepare`` writes where none ships (COCO train)."""


def generated_list_path(dataset: str, data_root: str | os.PathLike) -> Path:
    """``<data_root>/<dataset folder>/mseg_lists/<dataset>``: the folder of ``dataset``'s generated lists."""
    return Path(data_root) / DATASET_FOLDERS.get(dataset, "") / GENERATED_LISTS / dataset


def _generated_folders(dataset: str, data_root: str | os.PathLike | None) -> tuple[Path, ...]:
    """Where generated lists may be: below the MSeg root, or below the dataset's own folder given as the root."""
    if data_root is None:
        return ()
    return generated_list_path(dataset, data_root), Path(data_root) / GENERATED_LISTS / dataset


def _generated(dataset: str, split: str, data_root: str | os.PathLike | None) -> Path | None:
    return next((b / f"{split}.txt" for b in _generated_folders(dataset, data_root) if (b / f"{split}.txt").is_file()),
                None)  # fmt: skip


def available_splits(dataset: str, data_root: str | os.PathLike | None = None) -> list[str]:
    """Splits with a list: the original ones that ship with the package (e.g. ``['train', 'val']``), plus those
    ``mseg data prepare`` wrote below ``data_root`` (the COCO train lists)."""
    get_taxonomy(dataset)  # unknown names raise with the list of known ones
    folder = resources.files("mseg_semantic.data").joinpath("lists", dataset)
    splits = set()
    if folder.is_dir():
        splits |= {p.name.removesuffix(".txt.gz") for p in folder.iterdir() if p.name.endswith(".txt.gz")}
    for base in _generated_folders(dataset, data_root):
        if base.is_dir():
            splits |= {p.stem for p in base.glob("*.txt")}
    return sorted(splits)


def list_lines(dataset: str, split: str, data_root: str | os.PathLike | None = None) -> tuple[str, list[list[str]]]:
    """The original ``split`` list of ``dataset`` as (name for messages, fields of each line; blank lines kept as []).

    A list that does not ship (COCO train) is read from where ``mseg data prepare`` wrote it below ``data_root``.
    """
    resource = _list_resource(dataset, split)
    if resource.is_file():
        text = gzip.decompress(resource.read_bytes()).decode("utf-8")
        name = f"{dataset}/{split}.txt"
    else:
        path = _generated(dataset, split, data_root)
        if path is None:
            splits = available_splits(dataset, data_root)
            hint = "; 'mseg data prepare coco-panoptic' writes the COCO train lists" if "coco" in dataset else ""
            raise InputError(
                f"no {split!r} list ships for {dataset}; available: {', '.join(splits) or 'none'} "
                f"(or pass --list FILE{hint})"
            )
        text = path.read_text(encoding="utf-8")
        name = str(path)
    return name, [line.split() for line in text.splitlines()]


def dataset_root(dataset: str, data_root: str | os.PathLike) -> Path:
    """Where ``dataset`` lives: ``data_root/<its folder>`` when that exists, else ``data_root`` itself."""
    root = Path(data_root)
    if not root.is_dir():
        raise InputError(f"{root}: data root does not exist")
    folder = DATASET_FOLDERS.get(dataset)
    if folder and (root / folder).is_dir():
        return root / folder
    return root


def read_list_file(list_file: str | os.PathLike) -> list[list[str]]:
    """The fields of each line of a user's list file (blank lines kept as [], so line numbers stay right)."""
    path = Path(list_file)
    if not path.is_file():
        raise InputError(f"{path}: list file does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the list file ({exc})") from None
    return [line.split() for line in text.splitlines()]


def read_list(
    list_file: str | os.PathLike | None,
    data_root: str | os.PathLike,
    *,
    dataset: str | None = None,
    split: str = "val",
    require_labels: bool = True,
) -> list[ListEntry]:
    """Entries of a split list, with paths joined to ``data_root``.

    ``list_file`` is a user's list; when it is None, the original ``split`` list of ``dataset`` is used and
    ``data_root`` may be the MSeg root holding all datasets (``<root>/Camvid``, ...) or the dataset's own folder.
    Lines have one field (image only; allowed when ``require_labels`` is False) or two.
    """
    if list_file is None:
        if dataset is None:
            raise InputError("give a list file or a dataset name")
        root = dataset_root(dataset, data_root)
        name, lines = list_lines(dataset, split, data_root)
    else:
        name, lines = str(list_file), read_list_file(list_file)
        root = Path(data_root)
        if not root.is_dir():
            raise InputError(f"{root}: data root does not exist")
    entries = []
    for number, fields in enumerate(lines, start=1):
        if not fields:
            continue
        where = f"{name}:{number}"
        if len(fields) > 2:
            raise InputError(f"{where}: expected 'image_path label_path', got {len(fields)} fields")
        if len(fields) == 1 and require_labels:
            raise InputError(f"{where}: no label path (expected 'image_path label_path')")
        label = root / fields[1] if len(fields) == 2 else None
        entries.append(ListEntry(root / fields[0], label, where))
    if not entries:
        raise InputError(f"{name}: the list is empty")
    return entries
