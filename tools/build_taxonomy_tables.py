"""Derive the package's taxonomy tables from the original mseg-api reference data.

Run by hand when the reference data changes (it is not needed at install or run time):

    python tools/build_taxonomy_tables.py [--reference ../shared/reference/mseg-api] [--check]

It reads the master spreadsheet, the class-name lists, the two palettes of RGB-encoded datasets and the
pairwise remapping tables, validates them (every training class listed exactly once, every test cell a real
test class, ...), and writes our own layout into ``mseg_semantic/taxonomy/tables/``:

- ``taxonomies.yaml``: the index (name, kind, class count, what it is derived from);
- ``<name>.tsv``: one row per class, ``id  name  universal`` (``color`` for RGB-encoded raw datasets);
- ``remap/<source>_to_<target>.tsv``: one row per source label value, ``source_id  source  target_id  target``.

``--check`` compares the freshly derived tables with the committed ones and exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mseg_semantic.taxonomy.tables import (
    RELABELED_TRAIN_DATASETS,
    TEST_DATASETS,
    UNRELABELED_TRAIN_DATASETS,
)

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "mseg_semantic" / "taxonomy" / "tables"
DEFAULT_REFERENCE = REPO.parent / "shared" / "reference" / "mseg-api"

IGNORE = 255
UNLABELED = "unlabeled"

# The dataset lists are the package's own constants (plain tuples; importing them reads no table).
UNRELABELED_TRAIN = list(UNRELABELED_TRAIN_DATASETS)
RELABELED_TRAIN = list(RELABELED_TRAIN_DATASETS)
# cityscapes-34 has a master-table column but is not one of the default training datasets.
EXTRA_TRAIN = ["cityscapes-34"]
TEST = list(TEST_DATASETS)
RAW = [
    "ade20k-151",
    "camvid-32",
    "coco-panoptic-201",
    "coco-panoptic-inst-201",
    "idd-40",
    "kitti-34",
    "mapillary-public66",
    "pascal-context-460",
    "scannet-41",
    "sunrgbd-38",
    "wilddash-34",
]
# Raw datasets whose label files are RGB images; their palette converts colours to class ids.
RGB_ENCODED = ["camvid-32", "mapillary-public66"]

DESCRIPTIONS = {
    "universal": "MSeg universal taxonomy (194 classes), the output space of MSeg universal models",
    "ade20k-150": "ADE20K SceneParsing challenge (150 classes)",
    "bdd": "Berkeley Deep Drive BDD100K semantic segmentation (19 Cityscapes classes)",
    "cityscapes-19": "Cityscapes, 19 evaluation classes (train ids)",
    "cityscapes-34": "Cityscapes, all 34 label ids",
    "coco-panoptic-133": "COCO Panoptic, 133 things + stuff classes as semantic labels",
    "idd-39": "India Driving Dataset, level-3 ids without 'unlabeled' (39 classes)",
    "mapillary-public65": "Mapillary Vistas v1.2 public classes without 'Unlabeled' (65 classes)",
    "sunrgbd-37": "SUN RGB-D, 37 classes",
    "camvid-11": "CamVid, the 11 classes of the SegNet benchmark",
    "kitti-19": "KITTI semantic segmentation, 19 Cityscapes classes",
    "pascal-context-60": "PASCAL-Context, 59 classes + background (alphabetical)",
    "scannet-20": "ScanNet v2 benchmark, 20 classes",
    "voc2012": "PASCAL VOC 2012, 20 classes + background",
    "wilddash-19": "WildDash v1, 19 Cityscapes classes",
    "ade20k-151": "ADE20K challenge labels as distributed (0 = unlabeled)",
    "camvid-32": "CamVid labels as distributed (32 classes, RGB-encoded)",
    "coco-panoptic-201": "COCO Panoptic category-id space (unused ids are 'unlabeled')",
    "coco-panoptic-inst-201": "COCO Panoptic category-id space of the instance PNGs",
    "idd-40": "IDD level-3 ids as distributed (40 classes)",
    "kitti-34": "KITTI labels as distributed (Cityscapes 34 ids)",
    "mapillary-public66": "Mapillary Vistas v1.2 labels as distributed (66 classes, RGB-encoded)",
    "pascal-context-460": "PASCAL-Context full label set (460 classes, 0 = unlabeled)",
    "scannet-41": "ScanNet NYU40-style labels (41 classes, 0 = unlabeled)",
    "sunrgbd-38": "SUN RGB-D labels as distributed (0 = unlabeled)",
    "wilddash-34": "WildDash labels as distributed (Cityscapes 34 ids)",
}


def read_names(reference: Path, name: str) -> list[str]:
    """A names list: one class per line, stripped, blank lines dropped (as numpy.genfromtxt reads it)."""
    path = reference / "mseg" / "dataset_lists" / name / f"{name}_names.txt"
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()]


def read_colors(reference: Path, name: str) -> list[tuple[int, int, int]]:
    path = reference / "mseg" / "dataset_lists" / name / f"{name}_colors.txt"
    rows = [line.split() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(int(r), int(g), int(b)) for r, g, b in rows]


def read_tsv(path: Path) -> list[dict[str, str]]:
    """All cells as strings, blanks as '' (never NaN)."""
    text = path.read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))


def parse_train_cell(cell: str) -> list[str]:
    """'' -> [], '{a, b}' -> ['a', 'b'], 'a b' -> ['a b']."""
    assert cell == cell.strip(), f"cell with surrounding whitespace: {cell!r}"
    if not cell:
        return []
    if cell.startswith("{"):
        assert cell.endswith("}"), cell
        return [piece.strip() for piece in cell[1:-1].split(",")]
    return [cell]


def derive_train(rows: list[dict[str, str]], names: list[str], column: str) -> list[str]:
    """For each class of a training taxonomy, the universal class it maps to ('unlabeled' = ignore)."""
    target: dict[str, str] = {}
    for row in rows:
        for cls in parse_train_cell(row[column]):
            if cls not in names:
                raise SystemExit(f"{column}: class {cls!r} of the master table is not in the names list")
            if cls in target:
                raise SystemExit(f"{column}: class {cls!r} is listed in two rows")
            target[cls] = row["universal"].strip()
    missing = [n for n in names if n not in target]
    if missing:
        raise SystemExit(f"{column}: classes missing from the master table: {missing}")
    if len(set(names)) != len(names):
        raise SystemExit(f"{column}: duplicate names in the names list")
    return [target[n] for n in names]


def derive_test(rows: list[dict[str, str]], names: list[str], column: str) -> list[list[str]]:
    """For each test class, the universal classes (in universal id order) whose probability it receives."""
    sources: dict[str, list[str]] = {n: [] for n in names}
    for row in rows:
        cell = row[column]
        assert cell == cell.strip(), f"{column}: cell with surrounding whitespace: {cell!r}"
        if not cell:
            continue
        if row["universal"].strip() == UNLABELED:
            raise SystemExit(f"{column}: the unlabeled row must not feed a test class")
        if cell not in sources:
            raise SystemExit(f"{column}: test class {cell!r} is not in the names list")
        sources[cell].append(row["universal"].strip())
    return [sources[n] for n in names]


def derive_remap(
    pairs: list[dict[str, str]], source: str, target: str, src_names: list[str], dst_names: list[str]
) -> list[tuple[int, str, int, str]]:
    """One row per source label value (and 255): (source id, source name, target id, target name)."""
    name_map: dict[str, str] = {}
    for row in pairs:
        name_map.setdefault(row[source].strip(), row[target].strip())
    dst_index = {n: i for i, n in enumerate(dst_names)}
    # 'unlabeled' means the ignore value unless the target taxonomy has a real class of that name.
    dst_index.setdefault(UNLABELED, IGNORE)
    out = []
    # Value 255 is the ignore label, unless the source has that many classes (pascal-context-460: there the
    # original reads 255 as 'unlabeled' while the class is 'money'; both go to background).
    ignore_row = [(IGNORE, UNLABELED)] if len(src_names) <= IGNORE else []
    if not ignore_row and name_map.get(src_names[IGNORE]) != name_map.get(UNLABELED):
        raise SystemExit(f"{source}->{target}: class 255 and 'unlabeled' map to different classes")
    for sid, sname in [*enumerate(src_names), *ignore_row]:
        if sname not in name_map:
            if sid == IGNORE:
                continue  # the table says nothing about 255: handled by the reader as ignore -> ignore
            raise SystemExit(f"{source}->{target}: source class {sname!r} ({sid}) has no row")
        tname = name_map[sname]
        if tname not in dst_index:
            raise SystemExit(f"{source}->{target}: target class {tname!r} is not a class of {target}")
        out.append((sid, sname, dst_index[tname], tname))
    for sname in name_map:
        if sname not in src_names and sname != UNLABELED:
            raise SystemExit(f"{source}->{target}: row for unknown source class {sname!r}")
    return out


def tsv_text(header: list[str], rows: list[list[object]], comments: list[str]) -> str:
    lines = [f"# {c}" for c in comments]
    lines.append("\t".join(header))
    for row in rows:
        cells = [str(c) for c in row]
        assert all("\t" not in c and "\n" not in c for c in cells), row
        lines.append("\t".join(cells))
    return "\n".join(lines) + "\n"


def build(reference: Path) -> dict[str, str]:
    """Every output file (path relative to the tables folder) and its text."""
    master = read_tsv(reference / "mseg" / "class_remapping_files" / "MSeg_master.tsv")
    if master[-1]["universal"].strip() != UNLABELED:
        raise SystemExit("the last master row must be 'unlabeled'")
    universal = [row["universal"].strip() for row in master[:-1]]
    if len(set(universal)) != len(universal) or len(universal) != 194:
        raise SystemExit("universal names must be 194 unique names")

    origin = "derived from mseg-api MSeg_master.tsv and names lists (MSeg data, CC BY 4.0, see README)"
    files: dict[str, str] = {}
    index: list[dict[str, object]] = []

    def add(name: str, kind: str, header: list[str], rows: list[list[object]], **extra: object) -> None:
        files[f"{name}.tsv"] = tsv_text(header, rows, [f"taxonomy: {name}", f"kind: {kind}", origin])
        entry: dict[str, object] = {"name": name, "kind": kind, "num_classes": len(rows)}
        entry.update(extra)
        entry["description"] = DESCRIPTIONS.get(name) or DESCRIPTIONS[name.removesuffix("-relabeled")] + (
            ", MSeg relabeled version (classes are universal names)"
        )
        index.append(entry)

    add(
        "universal",
        "universal",
        ["id", "name", "group", "wordnet", "definition"],
        [
            [
                i,
                row["universal"].strip(),
                row["Parent Category"].strip(),
                row["WordNet 3.1 Synset"].strip(),
                row["Defn (Most of the meanings are derived from WordNet 3.1)"].strip(),
            ]
            for i, row in enumerate(master[:-1])
        ],
    )
    for name in [*UNRELABELED_TRAIN, *RELABELED_TRAIN, *EXTRA_TRAIN]:
        names = read_names(reference, name)
        targets = derive_train(master, names, name)
        extra: dict[str, object] = {"default_training": name not in EXTRA_TRAIN}
        if name.endswith("-relabeled"):
            extra["relabeled_from"] = name.removesuffix("-relabeled")
        add(
            name,
            "train",
            ["id", "name", "universal"],
            [[i, n, t] for i, (n, t) in enumerate(zip(names, targets, strict=True))],
            **extra,
        )
    for name in TEST:
        names = read_names(reference, name)
        sources = derive_test(master, names, name)
        add(
            name,
            "test",
            ["id", "name", "universal"],
            [[i, n, "; ".join(s)] for i, (n, s) in enumerate(zip(names, sources, strict=True))],
        )
    for name in RAW:
        names = read_names(reference, name)
        if name in RGB_ENCODED:
            colors = read_colors(reference, name)
            if len(colors) != len(names):
                raise SystemExit(f"{name}: {len(colors)} colours for {len(names)} classes")
            add(
                name,
                "raw",
                ["id", "name", "color"],
                [[i, n, f"{r},{g},{b}"] for i, (n, (r, g, b)) in enumerate(zip(names, colors, strict=True))],
                rgb_encoded=True,
            )
        else:
            add(name, "raw", ["id", "name"], [[i, n] for i, n in enumerate(names)])

    remaps = []
    for path in sorted((reference / "mseg" / "class_remapping_files").glob("*_to_*.tsv")):
        source, target = path.stem.split("_to_")
        pairs = read_tsv(path)
        rows = derive_remap(pairs, source, target, read_names(reference, source), read_names(reference, target))
        files[f"remap/{source}_to_{target}.tsv"] = tsv_text(
            ["source_id", "source", "target_id", "target"],
            [list(r) for r in rows],
            [
                f"remap: {source} -> {target}",
                "target_id 255 = unlabeled (ignore)",
                f"derived from mseg-api {path.name} (MSeg data, CC BY 4.0, see README)",
            ],
        )
        remaps.append({"source": source, "target": target})

    header = (
        "# Index of the taxonomy tables in this folder. Generated by tools/build_taxonomy_tables.py from the\n"
        "# mseg-api reference data (MSeg data, CC BY 4.0; see the README for the attribution). Do not edit by hand.\n"
    )
    files["taxonomies.yaml"] = header + yaml.safe_dump(
        {"ignore_label": IGNORE, "taxonomies": index, "remaps": remaps}, sort_keys=False, allow_unicode=True, width=120
    )
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE, help="the mseg-api reference folder")
    parser.add_argument("--check", action="store_true", help="compare with the committed tables, write nothing")
    args = parser.parse_args()
    files = build(args.reference)
    if args.check:
        stale = [p for p, text in files.items() if not (OUT_DIR / p).exists() or (OUT_DIR / p).read_text() != text]
        for p in stale:
            print(f"differs: {p}")
        return 1 if stale else 0
    for rel, text in files.items():
        path = OUT_DIR / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    print(f"wrote {len(files)} files to {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
