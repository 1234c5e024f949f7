"""Every taxonomy against the original mseg-api files (copies in tests/data/mseg-api), class by class.

The reference files are parsed here with the rules the original package used, independently of the package's
own tables, so a mistake in deriving the tables shows up as a difference.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest

from mseg_semantic.taxonomy import (
    RELABELED_TRAIN_DATASETS,
    TEST_DATASETS,
    UNRELABELED_TRAIN_DATASETS,
    TaxonomyConverter,
    class_names,
    remap_tables,
    taxonomy_names,
)

TRAIN = [*UNRELABELED_TRAIN_DATASETS, *RELABELED_TRAIN_DATASETS, "cityscapes-34"]


def names_file(mseg_api: Path, name: str) -> list[str]:
    text = (mseg_api / "dataset_lists" / name / f"{name}_names.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_tsv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"), newline=""), delimiter="\t"))


@pytest.fixture(scope="module")
def master(mseg_api: Path) -> list[dict[str, str]]:
    return read_tsv(mseg_api / "class_remapping_files" / "MSeg_master.tsv")


def cell_classes(cell: str) -> list[str]:
    if not cell:
        return []
    if cell.startswith("{"):
        return [c.strip() for c in cell[1:-1].split(",")]
    return [cell]


def test_universal_names_are_the_master_column(master):
    assert class_names("universal") == [row["universal"].strip() for row in master[:-1]]
    assert master[-1]["universal"] == "unlabeled"


def test_every_names_file_is_a_taxonomy(mseg_api):
    for folder in sorted((mseg_api / "dataset_lists").iterdir()):
        if (folder / f"{folder.name}_names.txt").exists():
            assert folder.name in taxonomy_names()
            assert class_names(folder.name) == names_file(mseg_api, folder.name), folder.name


@pytest.mark.parametrize("dataset", TRAIN)
def test_training_taxonomy_to_universal(dataset, master, mseg_api):
    names = names_file(mseg_api, dataset)
    expected = {}
    for uid, row in enumerate(master):
        for cls in cell_classes(row[dataset]):
            assert cls not in expected
            expected[cls] = 255 if row["universal"] == "unlabeled" else uid
    assert sorted(expected) == sorted(names)
    labels = np.arange(len(names), dtype=np.int64)
    got = TaxonomyConverter().to_universal(labels, dataset)
    assert got.tolist() == [expected[n] for n in names]


@pytest.mark.parametrize("dataset", TEST_DATASETS)
def test_universal_to_test_matrix(dataset, master, mseg_api):
    names = names_file(mseg_api, dataset)
    expected = np.zeros((len(names), 194), dtype=np.float32)
    for uid, row in enumerate(master[:-1]):
        if row[dataset]:
            expected[names.index(row[dataset]), uid] = 1
    np.testing.assert_array_equal(TaxonomyConverter().universal_to_test_matrix(dataset), expected)


def test_naive_taxonomy_follows_the_original_rule(mseg_api):
    merged: list[str] = []
    for dataset in UNRELABELED_TRAIN_DATASETS:
        for name in names_file(mseg_api, dataset):
            if name.lower() not in merged:
                merged.append(name.lower())
    ids = {name: i if i < 255 else i + 1 for i, name in enumerate(merged)}
    naive = class_names("naive")
    assert len(naive) == 316
    assert all(naive[i] == name for name, i in ids.items())
    converter = TaxonomyConverter()
    for dataset in UNRELABELED_TRAIN_DATASETS:
        names = names_file(mseg_api, dataset)
        got = converter.to_naive(np.arange(len(names)), dataset)
        assert got.tolist() == [ids[n.lower()] for n in names]
    for dataset in TEST_DATASETS:
        matrix = converter.universal_to_test_matrix(dataset, source="naive")
        for t, name in enumerate(names_file(mseg_api, dataset)):
            row = np.zeros(316, dtype=np.float32)
            if name.lower() in ids:
                row[ids[name.lower()]] = 1
            np.testing.assert_array_equal(matrix[t], row, err_msg=f"{dataset}:{name}")


def test_pairwise_tables(mseg_api):
    files = sorted((mseg_api / "class_remapping_files").glob("*_to_*.tsv"))
    assert len(files) == 19
    assert {tuple(f.stem.split("_to_")) for f in files} == set(remap_tables())
    converter = TaxonomyConverter()
    for path in files:
        source, target = path.stem.split("_to_")
        by_name = {}
        for row in read_tsv(path):
            by_name.setdefault(row[source], row[target])
        src, dst = names_file(mseg_api, source), names_file(mseg_api, target)
        table = converter.lookup_table(source, target)
        for sid, name in enumerate(src):
            if sid == 255:
                name = "unlabeled"  # the original reads value 255 as unlabeled (pascal-context-460: 'money')
            tname = by_name[name]
            expected = dst.index(tname) if tname in dst else 255
            assert table[sid] == expected, (path.name, sid, name)
        if len(src) <= 255:
            assert table[255] == (dst.index(by_name["unlabeled"]) if by_name.get("unlabeled") in dst else 255)
