"""`mseg data prepare` / `relabel` / `verify` per dataset, on tiny raw inputs built here in each dataset's format.

Every test writes a few raw files at the paths the shipped split lists name (below a tmp ROOT), runs the step on
those images only (``--list FILE``), and compares the outputs with arrays computed here from the taxonomy tables and
from plain geometry (axis-aligned rectangles as polygons: PIL's raster includes both end rows and columns). Covered:
Cityscapes, IDD, Mapillary, BDD (prepare and relabel), CamVid, KITTI, WildDash, ScanNet, VOC 2012, PASCAL-Context
(prepare / verify), an interrupted run and its resume, and the command line's answer to each kind of bad input.
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from mseg_semantic.cli import main
from mseg_semantic.data.lists import DATASET_FOLDERS
from mseg_semantic.dataprep.datasets import LOCK_NAME
from mseg_semantic.dataprep.run import prepare, relabel
from mseg_semantic.dataprep.verification import verify
from mseg_semantic.errors import InputError
from mseg_semantic.taxonomy import get_taxonomy
from mseg_semantic.taxonomy.converter import TaxonomyConverter

H, W = 24, 32
REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------- shipped lists and paths
@functools.cache
def shipped(taxonomy: str, split: str) -> dict[str, str]:
    """image path -> label path of a shipped list, read straight from the package's gzip file."""
    path = resources.files("mseg_semantic.data").joinpath("lists", taxonomy, f"{split}.txt.gz")
    pairs = [line.split() for line in gzip.decompress(path.read_bytes()).decode("utf-8").splitlines()]
    return {fields[0]: fields[1] for fields in pairs if len(fields) == 2}


def label_path(root: Path, taxonomy: str, split: str, image: str) -> Path:
    return root / DATASET_FOLDERS[taxonomy] / shipped(taxonomy, split)[image]


def image_path(root: Path, taxonomy: str, image: str) -> Path:
    return root / DATASET_FOLDERS[taxonomy] / image


def write_list(path: Path, images: list[str]) -> Path:
    path.write_text("".join(f"{image}\n" for image in images), encoding="utf-8")
    return path


# ---------------------------------------------------------------------- real files
def write_png(path: Path, array: np.ndarray) -> Path:
    """A grey PNG, 8- or 16-bit as the array's dtype."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb.astype(np.uint8), "RGB").save(path)
    return path


def write_photo(path: Path, height: int = H, width: int = W, seed: int = 0) -> Path:
    """An image (first list column): random RGB, JPEG or PNG by the suffix."""
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return write_rgb(path, rgb)


def read_png(path: Path) -> np.ndarray:
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert data is not None, f"{path} is not a readable PNG"
    return data


def files_below(folder: Path) -> list[Path]:
    """The files below ``folder`` but the lock file each writing step keeps in the dataset folder."""
    if not folder.exists():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != LOCK_NAME)


def rect(x0: int, y0: int, x1: int, y1: int) -> list[list[int]]:
    """An axis-aligned rectangle as a polygon (corners inclusive)."""
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def box(x0: int, y0: int, x1: int, y1: int) -> tuple[slice, slice]:
    """The pixels PIL rasterises for ``rect(x0, y0, x1, y1)``: both end rows and columns."""
    return slice(y0, y1 + 1), slice(x0, x1 + 1)


def lut(source: str, target: str) -> np.ndarray:
    table = TaxonomyConverter().lookup_table(source, target)
    return table


def remapped(label: np.ndarray, source: str, target: str) -> np.ndarray:
    table = lut(source, target)
    out = table[label.astype(np.int64)]
    assert (out >= 0).all(), "test input holds a value that is not a class"
    return out.astype(np.uint8)


def cls(taxonomy: str, name: str) -> int:
    """Index of class ``name`` in ``taxonomy`` (255 for unlabeled when it is not a class there)."""
    classes = list(get_taxonomy(taxonomy).classes)
    return classes.index(name) if name in classes else 255


def write_records(folder: Path, rows: list[tuple[str, str, str, str, str, list[str]]]) -> Path:
    """A records folder: ``records.tsv`` + the record files, in the original line format (no final newline)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = "dataset\tsplit\tfrom\tto\tfile\n"
    for dataset, split, orig, new, name, lines in rows:
        text += f"{dataset}\t{split}\t{orig}\t{new}\t{name}\n"
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines), encoding="utf-8")
    (folder / "records.tsv").write_text(text, encoding="utf-8")
    return folder


def polygons(objects: list[dict], height: int = H, width: int = W) -> dict:
    return {"imgHeight": height, "imgWidth": width, "objects": objects}


def write_json(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def cli(*args: str) -> int:
    return main(["data", *args, "--workers", "1", "--quiet"])


# ---------------------------------------------------------------------- Cityscapes
CS_VAL = "leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"
CS_VAL2 = "leftImg8bit/val/frankfurt/frankfurt_000000_000576_leftImg8bit.png"
CS_TRAIN = "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"
CS_SPLIT = {CS_VAL: "val", CS_VAL2: "val", CS_TRAIN: "train"}
CS_A, CS_B, CS_C = (2, 3, 11, 10), (20, 2, 29, 8), (8, 8, 15, 14)  # C overlaps A
CS_LINE_Y, CS_LINE_X = 20, (3, 25)
CS_TRAIN_BOX = (0, 0, 5, 5)


def cityscapes_raw(root: Path) -> dict[str, np.ndarray]:
    """Raw cityscapes-34 labelIds, images and polygon JSONs of three images; returns the raw labels."""
    rng = np.random.default_rng(1)
    raw = {}
    for i, image in enumerate(CS_SPLIT):
        label = rng.integers(0, 34, (H, W), dtype=np.uint8)
        if image == CS_VAL:
            label[CS_LINE_Y, CS_LINE_X[0] : CS_LINE_X[1] + 1] = cls("cityscapes-34", "rider")
        raw[image] = label
        write_png(label_path(root, "cityscapes-34", CS_SPLIT[image], image), label)
        write_photo(image_path(root, "cityscapes-34", image), seed=i)
    gt = root / "Cityscapes" / "gtFine"
    write_json(
        gt / "val" / "frankfurt" / "frankfurt_000000_000294_gtFine_polygons.json",
        polygons([
            {"label": "rider", "polygon": rect(*CS_A)},  # segment 0 (position)
            {"label": "rider", "id": 5, "polygon": rect(*CS_B)},  # segment 5 (its id key)
            {"label": "rider", "polygon": rect(*CS_C)},  # segment 2
            {"label": "rider", "deleted": 1, "polygon": rect(0, 0, W - 1, H - 1)},  # position 3 still counts
            {"label": "bicycle", "polygon": [[CS_LINE_X[0], CS_LINE_Y], [12, CS_LINE_Y], [CS_LINE_X[1], CS_LINE_Y]]},
            {"label": "rider", "polygon": rect(26, 12, 31, 18)},  # position 5: segment 5 is object 1, the first match
        ]),
    )  # fmt: skip
    write_json(
        gt / "train" / "aachen" / "aachen_000000_000019_gtFine_polygons.json",
        polygons([{"label": "rider", "polygon": rect(*CS_TRAIN_BOX)}]),
    )
    return raw


def cs_line(stem: str, segment: int) -> str:
    """A Cityscapes record line: ``seq<city>_<image stem>_<segment id>.jpg``."""
    return f"seq{stem.split('_')[0]}_{stem}_leftImg8bit_{segment}.jpg"


def cityscapes_records(folder: Path) -> Path:
    """Both Cityscapes taxonomies, the same record files (as the original's manifest lists them twice)."""
    val, train = "frankfurt_000000_000294", "aachen_000000_000019"
    files = [
        ("val", "rider_other", "motorcyclist", "cs/val_to_motorcyclist.txt", [cs_line(val, 0), cs_line(val, 5)]),
        ("val", "rider_other", "bicyclist", "cs/val_to_bicyclist.txt", [cs_line(val, 2)]),
        ("val", "rider_other", "rider_other", "cs/val_to_rider_other.txt", [cs_line(val, 4)]),
        ("train", "rider_other", "unlabeled", "cs/train_to_none.txt", [cs_line(train, 0)]),
    ]
    rows = [(f"cityscapes-{n}", *row) for n in (19, 34) for row in files]
    return write_records(folder, rows)


def test_cityscapes_prepare_relabel_both_taxonomies_and_verify(tmp_path):
    root = tmp_path / "root"
    raw = cityscapes_raw(root)
    chosen = write_list(tmp_path / "list.txt", list(CS_SPLIT))

    summary = prepare("cityscapes", root, list_file=chosen, workers=1, progress=False)
    assert summary.images == {"train": 1, "val": 2} and summary.written == {"train": 1, "val": 2}
    for image, split in CS_SPLIT.items():
        out = read_png(label_path(root, "cityscapes-19", split, image))
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, remapped(raw[image], "cityscapes-34", "cityscapes-19"))
    assert len(files_below(root / "Cityscapes" / "gtFine_19cls")) == 3  # only the listed images

    summaries = relabel("cityscapes", root, list_file=chosen, records=cityscapes_records(tmp_path / "rec"),
                        workers=1, progress=False)  # fmt: skip
    assert [s.dataset for s in summaries] == ["cityscapes-19", "cityscapes-34"]
    assert [s.updates for s in summaries] == [5, 5]
    assert [s.written for s in summaries] == [{"train": 1, "val": 2}] * 2
    for n, source in ((19, "cityscapes-19"), (34, "cityscapes-34")):
        target = f"cityscapes-{n}-relabeled"
        for image, split in CS_SPLIT.items():
            before = remapped(raw[image], "cityscapes-34", "cityscapes-19") if n == 19 else raw[image]
            expected = remapped(before, source, target)
            if image == CS_VAL:
                # the identity record's line holds bicyclist (Cityscapes rider) before it is relabeled
                assert (expected[CS_LINE_Y, CS_LINE_X[0] : CS_LINE_X[1] + 1] == cls(target, "bicyclist")).all()
                expected[box(*CS_A)] = cls(target, "motorcyclist")
                expected[box(*CS_B)] = cls(target, "motorcyclist")
                expected[box(*CS_C)] = cls(target, "bicyclist")  # later record wins where C overlaps A
                expected[CS_LINE_Y, CS_LINE_X[0] : CS_LINE_X[1] + 1] = cls(target, "rider_other")  # flat: a line
            if image == CS_TRAIN:
                expected[box(*CS_TRAIN_BOX)] = 255
            out = read_png(label_path(root, target, split, image))
            np.testing.assert_array_equal(out, expected, err_msg=f"{target} {image}")
    assert not (root / "Cityscapes" / ".mseg-relabel-staging").exists()

    report = verify("cityscapes", root, list_file=chosen, workers=1, progress=False)
    assert report.passed, report.problems
    assert sum(s.entries for s in report.splits) == 9  # 3 images x (19, 19-relabeled, 34-relabeled)


# ---------------------------------------------------------------------- IDD
IDD_VAL = "leftImg8bit/val/119/035471_leftImg8bit.png"
IDD_TRAIN = ("leftImg8bit/train/0/005506_leftImg8bit.png", "leftImg8bit/train/0/005626_leftImg8bit.png")
IH, IW = 30, 40


def idd_json_path(root: Path, image: str) -> Path:
    split, seq, name = image.split("/")[1:]
    stem = name.removesuffix("_leftImg8bit.png")
    return root / "IDD" / "IDD_Segmentation" / "gtFine" / split / seq / f"{stem}_gtFine_polygons.json"


IDD_OBJECTS = [
    {"id": 100, "label": "road", "polygon": rect(0, 15, 39, 29)},
    {"id": 101, "label": "car", "polygon": rect(5, 18, 14, 25)},
    {"id": 102, "label": "sky", "deleted": True, "polygon": rect(0, 0, 39, 14)},  # deleted: not drawn
    {"id": 103, "label": "persongroup", "polygon": rect(20, 2, 27, 12)},  # 'group' stripped -> person
    {"id": 104, "label": "sky", "polygon": [[0, 0], [39, 0]]},  # fewer than 3 points: not drawn
    {"id": 105, "label": "dragon", "polygon": rect(29, 2, 34, 8)},  # unknown label: skipped
    {"id": 106, "label": "rider", "polygon": rect(10, 20, 18, 28)},  # later objects paint over earlier
    {"id": 107, "label": "polegroup", "polygon": rect(36, 0, 38, 10)},  # a class of its own: kept
]


def idd_expected_40() -> np.ndarray:
    def c(name):
        return cls("idd-40", name)

    out = np.full((IH, IW), c("unlabeled"), dtype=np.uint8)
    for name, corners in (("road", (0, 15, 39, 29)), ("car", (5, 18, 14, 25)), ("person", (20, 2, 27, 12)),
                          ("rider", (10, 20, 18, 28)), ("polegroup", (36, 0, 38, 10))):  # fmt: skip
        out[box(*corners)] = c(name)
    return out


def test_idd_polygons_prepare_and_relabel(tmp_path):
    root = tmp_path / "root"
    write_json(idd_json_path(root, IDD_VAL), polygons(IDD_OBJECTS, IH, IW))
    write_json(idd_json_path(root, IDD_TRAIN[0]), polygons([{"label": "bus", "polygon": rect(1, 1, 8, 6)}], IH, IW))
    for i, image in enumerate((IDD_VAL, IDD_TRAIN[0])):
        write_photo(image_path(root, "idd-39", image), IH, IW, seed=i)
    chosen = write_list(tmp_path / "list.txt", [IDD_VAL, IDD_TRAIN[0]])

    summary = prepare("idd", root, list_file=chosen, workers=1, progress=False)
    assert summary.written == {"train": 2, "val": 2}  # idd-40 and idd-39 of each image
    ids40 = read_png(label_path(root, "idd-40", "val", IDD_VAL))
    expected40 = idd_expected_40()
    assert expected40[0, :30].tolist() == [cls("idd-40", "unlabeled")] * 30  # nothing drawn on the top row
    np.testing.assert_array_equal(ids40, expected40)
    np.testing.assert_array_equal(read_png(label_path(root, "idd-39", "val", IDD_VAL)),
                                  remapped(expected40, "idd-40", "idd-39"))  # fmt: skip
    train40 = np.full((IH, IW), cls("idd-40", "unlabeled"), dtype=np.uint8)
    train40[box(1, 1, 8, 6)] = cls("idd-40", "bus")
    np.testing.assert_array_equal(read_png(label_path(root, "idd-40", "train", IDD_TRAIN[0])), train40)
    assert 255 in read_png(label_path(root, "idd-39", "train", IDD_TRAIN[0]))  # unlabeled -> 255 in idd-39

    records = write_records(tmp_path / "rec", [
        ("idd-39", "val", "rider_other", "person", "idd/val_to_person.txt", ["seq119_035471_leftImg8bit_106.jpg"]),
        ("idd-39", "val", "rider_other", "bicyclist", "idd/val_bicyclist.txt", ["seq119_035471_leftImg8bit_101.jpg"]),
    ])  # fmt: skip
    (summary,) = relabel("idd", root, list_file=chosen, records=records, workers=1, progress=False)
    assert summary.updates == 2
    target = "idd-39-relabeled"
    expected = remapped(remapped(expected40, "idd-40", "idd-39"), "idd-39", target)
    assert (expected[box(10, 20, 18, 28)] == cls(target, "motorcyclist")).all()  # IDD rider, before relabeling
    expected[box(10, 20, 18, 28)] = cls(target, "person")
    expected[box(5, 18, 14, 25)] = cls(target, "bicyclist")  # non-strict: a car becomes bicyclist; later wins
    np.testing.assert_array_equal(read_png(label_path(root, target, "val", IDD_VAL)), expected)
    np.testing.assert_array_equal(
        read_png(label_path(root, target, "train", IDD_TRAIN[0])),
        remapped(remapped(train40, "idd-40", "idd-39"), "idd-39", target),
    )
    report = verify("idd", root, list_file=chosen, workers=1, progress=False)
    assert report.passed, report.problems


# ---------------------------------------------------------------------- Mapillary
MAP_TRAIN = "training/images/--SWG8TJo7vrbZ_x5YLj6A.jpg"  # the key holds '_' and '-'
MAP_VAL = "validation/images/--BJs76vloEaiH-wppzWNA.jpg"
MAP_SPLIT = {MAP_TRAIN: "train", MAP_VAL: "val"}
UNMATCHED = (1, 2, 3)
MAP_REGIONS = [  # (class of mapillary-public66 or None for a colour not in the palette, instance, corners)
    ("Water", 0, (0, 0, 9, 5)),
    ("Ground Animal", 0, (12, 8, 17, 13)),
    ("Ground Animal", 1, (20, 8, 25, 13)),
    (None, 0, (0, 20, 4, 23)),
    ("Unlabeled", 0, (28, 0, 31, 3)),
    ("Ego Vehicle", 0, (28, 20, 31, 23)),
]


def mapillary_raw(root: Path) -> dict[str, np.ndarray]:
    """Palette label PNGs, 16-bit instance PNGs and images; returns the mapillary-public66 ids the test expects."""
    tax = get_taxonomy("mapillary-public66")
    classes, colors = list(tax.classes), list(tax.colors)
    palette = [*colors, UNMATCHED]  # index 66: a colour the taxonomy does not have
    out = {}
    for i, (image, split) in enumerate(MAP_SPLIT.items()):
        index = np.full((H, W), classes.index("Road"), dtype=np.uint8)
        instances = np.full((H, W), classes.index("Road") * 256, dtype=np.uint16)
        for name, instance, corners in MAP_REGIONS:
            index[box(*corners)] = classes.index(name) if name else len(colors)
            instances[box(*corners)] = (classes.index(name) if name else 0) * 256 + instance
        paletted = Image.frombytes("P", (W, H), index.tobytes())
        paletted.putpalette([v for color in palette for v in color])
        path = label_path(root, "mapillary-public66", split, image)
        path.parent.mkdir(parents=True, exist_ok=True)
        paletted.save(path)
        write_png(path.parent.parent / "instances" / path.name, instances)
        write_photo(image_path(root, "mapillary-public66", image), seed=i)
        out[image] = np.where(index == len(colors), 0, index).astype(np.uint8)  # unmatched -> class 0 'Bird'
    return out


def test_mapillary_palette_prepare_and_strict_relabel(tmp_path):
    root = tmp_path / "root"
    ids66 = mapillary_raw(root)
    chosen = write_list(tmp_path / "list.txt", list(MAP_SPLIT))
    label = label_path(root, "mapillary-public66", "train", MAP_TRAIN)
    assert Image.open(label).mode == "P"  # a real palette PNG, as distributed

    summary = prepare("mapillary", root, list_file=chosen, workers=1, progress=False)
    assert summary.written == {"train": 1, "val": 1}
    for image, split in MAP_SPLIT.items():
        out = read_png(label_path(root, "mapillary-public65", split, image))
        expected = remapped(ids66[image], "mapillary-public66", "mapillary-public65")
        assert expected[box(0, 20, 4, 23)].tolist() == [[cls("mapillary-public65", "Bird")] * 5] * 4
        assert (expected[box(28, 0, 31, 3)] == 255).all()
        np.testing.assert_array_equal(out, expected)

    key = "--SWG8TJo7vrbZ_x5YLj6A"
    water = get_taxonomy("mapillary-public66").classes.index("Water") * 256
    records = write_records(tmp_path / "rec", [
        ("mapillary-public65", "train", "dog", "horse", "map/train_to_horse.txt", [f"mapillary_{key}_256.jpg"]),
        ("mapillary-public65", "train", "dog", "unlabeled", "map/train_to_none.txt", [f"mapillary_{key}_257.jpg"]),
        ("mapillary-public65", "train", "water_other", "river_lake", "map/train_water.txt",
         [f"mapillary_{key}_{water}.jpg"]),
    ])  # fmt: skip
    assert water == 7936
    (summary,) = relabel("mapillary", root, list_file=chosen, records=records, workers=1, progress=False)
    assert summary.updates == 3 and summary.written == {"train": 1, "val": 1}
    target = "mapillary-public65-relabeled"
    for image, split in MAP_SPLIT.items():
        expected = remapped(remapped(ids66[image], "mapillary-public66", "mapillary-public65"),
                            "mapillary-public65", target)  # fmt: skip
        assert (expected[box(0, 20, 4, 23)] == cls(target, "bird")).all()
        assert (expected[box(28, 20, 31, 23)] == 255).all()  # Ego Vehicle is dropped
        if image == MAP_TRAIN:
            expected[box(12, 8, 17, 13)] = cls(target, "horse")
            expected[box(20, 8, 25, 13)] = 255
            expected[box(0, 0, 9, 5)] = cls(target, "river_lake")
        np.testing.assert_array_equal(read_png(label_path(root, target, split, image)), expected)


def test_mapillary_strict_mismatch_names_the_record_and_writes_nothing(tmp_path, capsys):
    root = tmp_path / "root"
    mapillary_raw(root)
    chosen = write_list(tmp_path / "list.txt", list(MAP_SPLIT))
    assert prepare("mapillary", root, list_file=chosen, workers=1, progress=False).written == {"train": 1, "val": 1}
    train_key, val_key = "--SWG8TJo7vrbZ_x5YLj6A", "--BJs76vloEaiH-wppzWNA"
    records = write_records(tmp_path / "rec", [
        ("mapillary-public65", "train", "dog", "horse", "map/train_ok.txt", [f"mapillary_{train_key}_256.jpg"]),
        # line 1 is right (7936 is the water); line 2 says segment 256, a dog, holds water_other
        ("mapillary-public65", "val", "water_other", "sea", "map/val_bad.txt",
         [f"mapillary_{val_key}_7936.jpg", f"mapillary_{val_key}_256.jpg"]),
    ])  # fmt: skip
    args = ("relabel", "mapillary", "--root", str(root), "--list", str(chosen), "--records", str(records))
    assert cli(*args, "--strict") == 2
    err = capsys.readouterr().err
    assert f"{records / 'map' / 'val_bad.txt'}:2: segment 256 holds class ids" in err
    base = root / "MapillaryVistasPublic"
    assert files_below(base / "training_semseg65_relabeled") == []  # the train image had succeeded: not moved
    assert files_below(base / "validation_semseg65_relabeled") == []
    assert not (base / ".mseg-relabel-staging").exists()
    # Without --strict the mismatching segment is left out with a warning; the other two are applied.
    assert cli(*args) == 0
    captured = capsys.readouterr()
    assert f"warning: {records / 'map' / 'val_bad.txt'}:2: segment 256 holds class ids" in captured.err
    assert "2 segments relabeled" in captured.out and "1 segments left unrelabeled" in captured.out


# ---------------------------------------------------------------------- BDD
BDD_TRAIN = "seg/images/train/0004a4c0-d4dff0ad.jpg"
BDD_VAL = "seg/images/val/7d06fefd-f7be05a6.jpg"
BDD_SPLIT = {BDD_TRAIN: "train", BDD_VAL: "val"}


def test_bdd_nothing_to_prepare_and_strict_class_region_relabel(tmp_path, capsys):
    root = tmp_path / "root"
    rng = np.random.default_rng(3)
    labels = {}
    for i, (image, split) in enumerate(BDD_SPLIT.items()):
        label = rng.choice([*range(11), *range(13, 19), 255], size=(H, W)).astype(np.uint8)
        label[box(2, 2, 9, 9)] = 11  # person
        label[15, 20] = label[23, 31] = 11  # scattered person pixels belong to the same class region
        label[box(20, 2, 25, 6)] = 12  # rider
        labels[image] = label
        write_png(label_path(root, "bdd", split, image), label)
        write_photo(image_path(root, "bdd", image), seed=i)
    chosen = write_list(tmp_path / "list.txt", list(BDD_SPLIT))
    before = sorted(files_below(root))

    assert cli("prepare", "bdd", "--root", str(root), "--list", str(chosen)) == 0
    assert "nothing to convert" in capsys.readouterr().out
    summary = prepare("bdd", root, list_file=chosen, workers=1, progress=False)
    assert "nothing to convert" in summary.note and summary.written == {}
    assert sorted(files_below(root)) == before

    records = write_records(tmp_path / "rec", [
        ("bdd", "train", "person", "motorcyclist", "bdd/train_person.txt", ["0004a4c0-d4dff0ad_11.jpg"]),
        ("bdd", "train", "rider_other", "bicyclist", "bdd/train_rider.txt", ["0004a4c0-d4dff0ad_12.jpg"]),
    ])  # fmt: skip
    (summary,) = relabel("bdd", root, list_file=chosen, records=records, workers=1, progress=False)
    assert summary.updates == 2
    for image, split in BDD_SPLIT.items():
        expected = remapped(labels[image], "bdd", "bdd-relabeled")
        if image == BDD_TRAIN:
            expected[labels[image] == 11] = cls("bdd-relabeled", "motorcyclist")
            expected[labels[image] == 12] = cls("bdd-relabeled", "bicyclist")
        np.testing.assert_array_equal(read_png(label_path(root, "bdd-relabeled", split, image)), expected)
    np.testing.assert_array_equal(read_png(label_path(root, "bdd", "train", BDD_TRAIN)), labels[BDD_TRAIN])

    # a record whose 'from' class is not what the segment holds: skipped, or under strict, the run stops
    bad = write_records(tmp_path / "bad", [
        ("bdd", "val", "person", "bicyclist", "bdd/val.txt", ["7d06fefd-f7be05a6_12.jpg"]),
    ])  # fmt: skip
    with pytest.raises(InputError, match=r"val\.txt:1: segment 12 holds class ids"):
        relabel("bdd", root, list_file=chosen, records=bad, workers=1, overwrite=True, strict=True, progress=False)
    (summary,) = relabel("bdd", root, list_file=chosen, records=bad, workers=1, overwrite=True, progress=False)
    assert summary.updates == 0 and len(summary.unrelabeled) == 1 and "val.txt:1: segment 12" in summary.unrelabeled[0]


# ---------------------------------------------------------------------- CamVid, KITTI, WildDash, ScanNet
def test_camvid_rgb_labels(tmp_path):
    root = tmp_path / "root"
    tax = get_taxonomy("camvid-32")
    colors = np.array([*tax.colors, UNMATCHED], dtype=np.uint8)
    rng = np.random.default_rng(4)
    images = {next(iter(shipped("camvid-32", "train"))): "train", next(iter(shipped("camvid-32", "val"))): "val"}
    ids = {}
    for i, (image, split) in enumerate(images.items()):
        index = rng.integers(0, len(colors), (H, 40))
        index[0, : len(colors)] = np.arange(len(colors))  # every colour once
        write_rgb(label_path(root, "camvid-32", split, image), colors[index])
        write_photo(image_path(root, "camvid-32", image), H, 40, seed=i)
        ids[image] = np.where(index == len(tax.colors), 0, index).astype(np.uint8)  # unmatched -> 'Animal'
    chosen = write_list(tmp_path / "list.txt", list(images))

    summary = prepare("camvid", root, list_file=chosen, workers=1, progress=False)
    assert summary.written == {"train": 1, "val": 1}
    for image, split in images.items():
        expected = remapped(ids[image], "camvid-32", "camvid-11")
        assert expected[0, len(tax.colors)] == 255  # unmatched colour: Animal, not a camvid-11 class
        np.testing.assert_array_equal(read_png(label_path(root, "camvid-11", split, image)), expected)
    assert verify("camvid", root, list_file=chosen, workers=1, progress=False).passed


KITTI = ("training/image_2/000058_10.png", "training/image_2/000040_10.png")  # the first two train lines


def kitti_raw(root: Path, seed: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    raw = {}
    for image in KITTI:
        raw[image] = rng.integers(0, 34, (H, W), dtype=np.uint8)
        write_png(label_path(root, "kitti-34", "train", image), raw[image])
    return raw


def test_kitti_prepare_through_the_real_command_line(tmp_path):
    root = tmp_path / "root"
    raw = kitti_raw(root)
    val = next(iter(shipped("kitti-34", "val")))
    raw[val] = (np.arange(H * W) % 34).reshape(H, W).astype(np.uint8)  # every class
    write_png(label_path(root, "kitti-34", "val", val), raw[val])
    chosen = write_list(tmp_path / "list.txt", [*KITTI, val])
    done = subprocess.run(
        [sys.executable, "-m", "mseg_semantic", "data", "prepare", "kitti", "--root", str(root), "--list",
         str(chosen), "--workers", "1", "--quiet"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "kitti train: 2 images, 2 files written" in done.stdout
    for image in raw:
        split = "val" if image == val else "train"
        out = read_png(label_path(root, "kitti-19", split, image))
        np.testing.assert_array_equal(out, remapped(raw[image], "kitti-34", "kitti-19"))
    assert len(files_below(root / "KITTI" / "training" / "label19")) == 3


def test_wilddash_unique_outputs_with_a_process_pool(tmp_path):
    """The train list is the val list 16 times: 70 conversions, not 1,120 (run by 2 worker processes)."""
    root = tmp_path / "root"
    rng = np.random.default_rng(6)
    val = shipped("wilddash-34", "val")
    assert len(val) == 70
    raw = {}
    for image in val:
        raw[image] = rng.integers(0, 34, (8, 8), dtype=np.uint8)
        write_png(label_path(root, "wilddash-34", "val", image), raw[image])
    summary = prepare("wilddash", root, workers=2, progress=False)
    assert summary.images == {"train": 70, "val": 70}
    assert summary.written == {"train": 70, "val": 0}  # val's labels are train's: already there
    outputs = files_below(root / "WildDash" / "wd_val_19class")
    assert len(outputs) == 70
    for image in val:
        out = read_png(label_path(root, "wilddash-19", "val", image))
        np.testing.assert_array_equal(out, remapped(raw[image], "wilddash-34", "wilddash-19"))


def test_scannet_8_and_16_bit_labels(tmp_path):
    root = tmp_path / "root"
    train, val = next(iter(shipped("scannet-41", "train"))), next(iter(shipped("scannet-41", "val")))
    rng = np.random.default_rng(7)
    raw = {train: rng.integers(0, 41, (H, W)).astype(np.uint16), val: rng.integers(0, 41, (H, W)).astype(np.uint8)}
    for image, split in ((train, "train"), (val, "val")):
        write_png(label_path(root, "scannet-41", split, image), raw[image])
        write_photo(image_path(root, "scannet-41", image), seed=1)
    assert read_png(label_path(root, "scannet-41", "train", train)).dtype == np.uint16
    chosen = write_list(tmp_path / "list.txt", [train, val])
    summary = prepare("scannet", root, list_file=chosen, workers=1, progress=False)
    assert summary.written == {"train": 1, "val": 1}
    for image, split in ((train, "train"), (val, "val")):
        out = read_png(label_path(root, "scannet-20", split, image))
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, remapped(raw[image], "scannet-41", "scannet-20"))
    assert verify("scannet", root, list_file=chosen, workers=1, progress=False).passed


# ---------------------------------------------------------------------- VOC 2012 and PASCAL-Context
def test_voc2012_nothing_to_prepare_and_verify(tmp_path):
    root = tmp_path / "root"
    train, val = next(iter(shipped("voc2012", "train"))), next(iter(shipped("voc2012", "val")))
    rng = np.random.default_rng(8)
    for image, split in ((train, "train"), (val, "val")):
        label = rng.choice([*range(21), 255], size=(H, W)).astype(np.uint8)
        write_png(label_path(root, "voc2012", split, image), label)
        write_photo(image_path(root, "voc2012", image))
    chosen = write_list(tmp_path / "list.txt", [train, val])
    before = {p: p.read_bytes() for p in files_below(root)}
    summary = prepare("voc2012", root, list_file=chosen, workers=1, progress=False)
    assert "nothing to convert" in summary.note
    assert {p: p.read_bytes() for p in files_below(root)} == before

    report = verify("voc2012", root, list_file=chosen, workers=1, progress=False)
    assert report.passed, report.problems
    assert [(s.split, s.entries, s.ok) for s in report.splits] == [("train", 1, 1), ("val", 1, 1)]
    # the same check fails for a value that is not a class and for a size that is not the image's
    bad = rng.integers(0, 21, (H, W)).astype(np.uint8)
    bad[0, 0] = 21
    write_png(label_path(root, "voc2012", "val", val), bad)
    write_png(label_path(root, "voc2012", "train", train), np.zeros((H, W + 1), np.uint8))
    report = verify("voc2012", root, list_file=chosen, workers=1, progress=False)
    assert not report.passed
    text = "\n".join(report.problems)
    assert "[21]" in text and f"{W + 1}x{H}" in text


PC_TRAIN, PC_VAL = "JPEGImages/2008_000008.jpg", "JPEGImages/2008_000002.jpg"


def write_mat(root: Path, image: str, label: np.ndarray) -> Path:
    from scipy.io import savemat

    path = root / "PASCAL_Context" / "trainval" / f"{Path(image).stem}.mat"
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {"LabelMap": label})
    return path


def test_pascal_context_mat_to_460_to_60(tmp_path):
    root = tmp_path / "root"
    rng = np.random.default_rng(9)
    labels = {
        PC_TRAIN: rng.integers(0, 460, (H, W)).astype(np.uint16),
        PC_VAL: rng.integers(0, 460, (H, W)).astype(np.uint16),
    }
    labels[PC_TRAIN][0, :4] = [0, 255, 256, 459]  # unlabeled, 'money' (index 255), and beyond 8 bits
    for i, (image, label) in enumerate(labels.items()):
        write_mat(root, image, label)
        write_photo(image_path(root, "pascal-context-60", image), seed=i)
    chosen = write_list(tmp_path / "list.txt", list(labels))
    summary = prepare("pascal-context", root, list_file=chosen, workers=1, progress=False)
    assert summary.written == {"train": 2, "val": 2}
    for image, split in ((PC_TRAIN, "train"), (PC_VAL, "val")):
        gt460 = read_png(label_path(root, "pascal-context-460", split, image))
        assert gt460.dtype == np.uint16
        np.testing.assert_array_equal(gt460, labels[image])
        out = read_png(label_path(root, "pascal-context-60", split, image))
        expected = remapped(labels[image], "pascal-context-460", "pascal-context-60")
        assert 255 not in expected and 255 not in out
        np.testing.assert_array_equal(out, expected)
    first = read_png(label_path(root, "pascal-context-60", "train", PC_TRAIN))[0, :2]
    assert first.tolist() == [cls("pascal-context-60", "background")] * 2
    assert verify("pascal-context", root, list_file=chosen, workers=1, progress=False).passed

    # the original deletes trainval/ after writing the 460-class PNGs: those are then the input
    out60 = label_path(root, "pascal-context-60", "val", PC_VAL)
    reference = out60.read_bytes()
    out60.unlink()
    for path in files_below(root / "PASCAL_Context" / "trainval"):
        path.unlink()
    summary = prepare("pascal-context", root, list_file=chosen, workers=1, progress=False)
    assert summary.written == {"train": 0, "val": 1}
    assert out60.read_bytes() == reference


def test_pascal_context_460_intermediate_is_always_16_bit(tmp_path):
    root = tmp_path / "root"
    label = np.random.default_rng(10).integers(0, 200, (H, W)).astype(np.uint16)
    write_mat(root, PC_TRAIN, label)
    chosen = write_list(tmp_path / "list.txt", [PC_TRAIN])
    prepare("pascal-context", root, list_file=chosen, workers=1, progress=False)
    gt460 = read_png(label_path(root, "pascal-context-460", "train", PC_TRAIN))
    np.testing.assert_array_equal(gt460, label)
    assert gt460.dtype == np.uint16


# ---------------------------------------------------------------------- an interrupted run and its resume
def idd_outputs(root: Path, image: str) -> list[Path]:
    return [label_path(root, t, "train", image) for t in ("idd-40", "idd-39")]


def test_interrupted_prepare_keeps_finished_images_and_resumes(tmp_path, capsys):
    first, second = IDD_TRAIN  # in list order: the second image's job runs after the first
    good = {
        first: polygons([{"label": "car", "polygon": rect(2, 2, 20, 12)}], IH, IW),
        second: polygons([{"label": "sky", "polygon": rect(0, 0, 39, 9)}, {"label": "road", "polygon":
                          rect(0, 10, 39, 29)}], IH, IW),
    }  # fmt: skip
    clean, root = tmp_path / "clean", tmp_path / "root"
    for image, data in good.items():
        write_json(idd_json_path(clean, image), data)
    write_json(idd_json_path(root, first), good[first])
    idd_json_path(root, second).write_text('{"imgHeight": 30, "imgWidth": 40, "objects": [{"label": "sky", "po')
    chosen = write_list(tmp_path / "list.txt", [second, first])

    with pytest.raises(InputError, match=r"005626_gtFine_polygons\.json") as failure:
        prepare("idd", root, list_file=chosen, workers=1, progress=False)
    assert second in str(failure.value)
    expected = np.full((IH, IW), cls("idd-40", "unlabeled"), dtype=np.uint8)
    expected[box(2, 2, 20, 12)] = cls("idd-40", "car")
    done40, done39 = idd_outputs(root, first)
    np.testing.assert_array_equal(read_png(done40), expected)
    np.testing.assert_array_equal(read_png(done39), remapped(expected, "idd-40", "idd-39"))
    assert not any(p.exists() for p in idd_outputs(root, second))
    folders = {p.parent for p in idd_outputs(root, first)}
    names = sorted(p.name for f in folders for p in f.iterdir())  # no temporary files left behind
    assert names == ["005506_gtFine_labelids.png"] * 2 + ["005506_gtFine_polygons.json", "005626_gtFine_polygons.json"]

    write_json(idd_json_path(root, second), good[second])  # fixed
    old = 1_000_000_000_000_000_000  # ns
    for path in idd_outputs(root, first):
        os.utime(path, ns=(old, old))
    summary = prepare("idd", root, list_file=chosen, workers=1, progress=False)
    assert summary.written == {"train": 2, "val": 0} and summary.skipped == {"train": 1, "val": 0}
    assert [p.stat().st_mtime_ns for p in idd_outputs(root, first)] == [old, old]  # untouched

    prepare("idd", clean, list_file=chosen, workers=1, progress=False)
    for image in good:
        for ours, reference in zip(idd_outputs(root, image), idd_outputs(clean, image), strict=True):
            assert ours.read_bytes() == reference.read_bytes(), ours

    assert cli("prepare", "idd", "--root", str(root), "--list", str(chosen), "--overwrite") == 0
    assert "idd train: 2 images, 4 files written" in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns != old for p in idd_outputs(root, first))
    for image in good:
        for ours, reference in zip(idd_outputs(root, image), idd_outputs(clean, image), strict=True):
            assert ours.read_bytes() == reference.read_bytes(), ours


# ---------------------------------------------------------------------- bad input through the command line
def test_cli_list_line_naming_no_image(tmp_path, capsys):
    root = tmp_path / "root"
    kitti_raw(root)
    chosen = write_list(tmp_path / "list.txt", [KITTI[0], "training/image_2/999999_10.png"])
    assert cli("prepare", "kitti", "--root", str(root), "--list", str(chosen)) == 2
    err = capsys.readouterr().err
    assert f"{chosen}:2" in err and "999999_10.png" in err
    assert files_below(root / "KITTI" / "training" / "label19") == []


def test_cli_missing_raw_file_is_named(tmp_path, capsys):
    root = tmp_path / "root"
    kitti_raw(root)
    missing = label_path(root, "kitti-34", "train", KITTI[1])
    missing.unlink()
    chosen = write_list(tmp_path / "list.txt", list(KITTI))
    assert cli("prepare", "kitti", "--root", str(root), "--list", str(chosen)) == 2
    assert str(missing) in capsys.readouterr().err


def test_cli_corrupt_raw_png_is_named_and_nothing_is_half_written(tmp_path, capsys):
    root = tmp_path / "root"
    kitti_raw(root)
    corrupt = label_path(root, "kitti-34", "train", KITTI[0])
    corrupt.write_bytes(corrupt.read_bytes()[:-30])  # truncated
    chosen = write_list(tmp_path / "list.txt", [KITTI[0]])
    assert cli("prepare", "kitti", "--root", str(root), "--list", str(chosen)) == 2
    assert str(corrupt) in capsys.readouterr().err
    assert files_below(root / "KITTI" / "training" / "label19") == []


def relabel_cityscapes(tmp_path: Path, rows: list[tuple]) -> tuple[int, Path, Path]:
    """relabel cityscapes on the prepared tiny root with these record rows; (exit status, root, records folder)."""
    root = tmp_path / "root"
    cityscapes_raw(root)
    chosen = write_list(tmp_path / "list.txt", list(CS_SPLIT))
    prepare("cityscapes", root, list_file=chosen, workers=1, progress=False)
    records = write_records(tmp_path / "rec", rows)
    return (cli("relabel", "cityscapes", "--root", str(root), "--list", str(chosen), "--records", str(records)),
            root, records)  # fmt: skip


def no_relabeled_files(root: Path) -> bool:
    return not files_below(root / "Cityscapes" / "gtFine_19cls_relabeled") and not files_below(
        root / "Cityscapes" / "gtFine_34cls_relabeled"
    )


def test_cli_unparseable_record_line(tmp_path, capsys):
    lines = ["seqfrankfurt_frankfurt_000000_000294_leftImg8bit_0.jpg", "frankfurt_000000_000294_leftImg8bit_x.jpg"]
    status, root, records = relabel_cityscapes(tmp_path, [
        ("cityscapes-19", "val", "rider_other", "bicyclist", "cs/bad.txt", lines),
    ])  # fmt: skip
    assert status == 2
    assert f"{records / 'cs' / 'bad.txt'}:2" in capsys.readouterr().err
    assert no_relabeled_files(root)


def test_cli_record_naming_an_image_not_in_the_list(tmp_path, capsys):
    root = tmp_path / "root"
    root.mkdir()
    records = write_records(tmp_path / "rec", [
        ("cityscapes-19", "val", "rider_other", "bicyclist", "cs/val.txt",
         [cs_line("frankfurt_000000_000294", 0), cs_line("frankfurt_123456_654321", 3)]),
    ])  # fmt: skip
    assert cli("relabel", "cityscapes", "--root", str(root), "--records", str(records)) == 2
    err = capsys.readouterr().err
    assert f"{records / 'cs' / 'val.txt'}:2" in err and "frankfurt_123456_654321" in err
    assert files_below(root) == []


def test_cli_duplicate_segment_across_record_files(tmp_path, capsys):
    line = "seqfrankfurt_frankfurt_000000_000294_leftImg8bit_2.jpg"
    status, root, records = relabel_cityscapes(tmp_path, [
        ("cityscapes-34", "val", "rider_other", "bicyclist", "cs/one.txt",
         ["seqfrankfurt_frankfurt_000000_000294_leftImg8bit_0.jpg", line]),
        ("cityscapes-34", "val", "rider_other", "person", "cs/two.txt", [line]),
    ])  # fmt: skip
    assert status == 2
    err = capsys.readouterr().err
    assert f"{records / 'cs' / 'two.txt'}:1" in err and f"{records / 'cs' / 'one.txt'}:2" in err
    assert no_relabeled_files(root)


def test_cli_manifest_row_naming_a_missing_file(tmp_path, capsys):
    root = tmp_path / "root"
    root.mkdir()
    records = write_records(tmp_path / "rec", [
        ("cityscapes-19", "val", "rider_other", "bicyclist", "cs/here.txt", [cs_line("frankfurt_000000_000294", 0)]),
        ("cityscapes-19", "val", "rider_other", "person", "cs/gone.txt", [cs_line("frankfurt_000000_000294", 2)]),
    ])  # fmt: skip
    (records / "cs" / "gone.txt").unlink()
    assert cli("relabel", "cityscapes", "--root", str(root), "--records", str(records)) == 2
    err = capsys.readouterr().err
    assert f"{records / 'records.tsv'}:3" in err and "gone.txt" in err


def test_cli_manifest_with_a_bad_header(tmp_path, capsys):
    root = tmp_path / "root"
    root.mkdir()
    records = write_records(tmp_path / "rec", [
        ("cityscapes-19", "val", "rider_other", "bicyclist", "cs/here.txt", [cs_line("frankfurt_000000_000294", 0)]),
    ])  # fmt: skip
    manifest = records / "records.tsv"
    manifest.write_text(manifest.read_text().replace("dataset\tsplit\tfrom\tto", "dataset\tsplit\tsource\ttarget"))
    assert cli("relabel", "cityscapes", "--root", str(root), "--records", str(records)) == 2
    assert f"{manifest}:1" in capsys.readouterr().err


def test_cli_unknown_dataset(tmp_path, capsys):
    root = tmp_path / "root"
    root.mkdir()
    assert cli("prepare", "citiscapes", "--root", str(root)) == 2
    err = capsys.readouterr().err
    assert "unknown dataset 'citiscapes'" in err and "cityscapes" in err
    assert cli("relabel", "camvid", "--root", str(root)) == 2  # a test dataset: nothing to relabel
    assert "test dataset" in capsys.readouterr().err
