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


def available_splits(dataset: str) -> list[str]:
    """Splits whose original list ships with the package (e.g. ``['train', 'val']``)."""
    get_taxonomy(dataset)  # unknown names raise with the list of known ones
    folder = resources.files("mseg_semantic.data").joinpath("lists", dataset)
    if not folder.is_dir():
        return []
    return sorted(p.name.removesuffix(".txt.gz") for p in folder.iterdir() if p.name.endswith(".txt.gz"))


def dataset_root(dataset: str, data_root: str | os.PathLike) -> Path:
    """Where ``dataset`` lives: ``data_root/<its folder>`` when that exists, else ``data_root`` itself."""
    root = Path(data_root)
    if not root.is_dir():
        raise InputError(f"{root}: data root does not exist")
    folder = DATASET_FOLDERS.get(dataset)
    if folder and (root / folder).is_dir():
        return root / folder
    return root


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
        resource = _list_resource(dataset, split)
        if not resource.is_file():
            splits = available_splits(dataset)
            raise InputError(
                f"no {split!r} list ships for {dataset}; available: {', '.join(splits) or 'none'} (or pass --list FILE)"
            )
        text = gzip.decompress(resource.read_bytes()).decode("utf-8")
        name = f"{dataset}/{split}.txt"
        root = dataset_root(dataset, data_root)
    else:
        path = Path(list_file)
        if not path.is_file():
            raise InputError(f"{path}: list file does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: cannot read the list file ({exc})") from None
        name = str(path)
        root = Path(data_root)
        if not root.is_dir():
            raise InputError(f"{root}: data root does not exist")
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
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
