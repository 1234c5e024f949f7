"""A taxonomy of the user's own from a file: the format, every bad-file message, and `mseg taxonomy check/show/map`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mseg_semantic.cli import main
from mseg_semantic.errors import InputError, TaxonomyError
from mseg_semantic.taxonomy import (
    TaxonomyConverter,
    check_taxonomy_file,
    class_names,
    load_taxonomy_file,
    resolve_taxonomy,
)

DRIVE = (
    "# name: drive\n"
    "# palette: 128,64,128; 220,20,60; 70,130,180; 90,90,90\n"
    "id\tname\tcamvid-11\n"
    "0\tdrivable\tRoad\n"
    "1\tobstacle\tCar; Pedestrian; Bicyclist; Fence; SignSymbol; Column_Pole\n"
    "2\tsky\tSky\n"
    "3\tother\tBuilding; Tree; Sidewalk\n"
)


def write(tmp_path: Path, text: str, name: str = "mine.tsv") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_a_good_file_gives_a_taxonomy_and_its_matrix(tmp_path):
    path = write(tmp_path, DRIVE)
    tax = load_taxonomy_file(path)
    assert (tax.name, tax.kind, tax.source, tax.origin, tax.origin_line) == ("drive", "file", "camvid-11", path, 3)
    assert tax.classes == ("drivable", "obstacle", "sky", "other") and tax.colors[2] == (70, 130, 180)
    assert resolve_taxonomy(path) == tax and resolve_taxonomy(tax) is tax
    assert resolve_taxonomy("camvid-11").name == "camvid-11"
    matrix = TaxonomyConverter().universal_to_test_matrix(tax)
    camvid = class_names("camvid-11")
    assert matrix.shape == (4, 11) and matrix.sum() == 11 and matrix[0, camvid.index("Road")] == 1
    assert check_taxonomy_file(path) == []


def test_rows_in_any_order_and_no_comments(tmp_path):
    path = write(tmp_path, "id\tname\tuniversal\n1\tsky\tsky\n0\tground\troad; sidewalk_pavement\n", "ground.tsv")
    tax = load_taxonomy_file(path)
    assert tax.name == "ground" and tax.classes == ("ground", "sky") and tax.colors is None
    matrix = TaxonomyConverter().universal_to_test_matrix(tax)
    assert matrix.shape == (2, 194) and matrix.sum() == 3  # the other 191 universal classes feed no row


def test_the_probabilities_are_the_row_sums():
    import torch

    tax = load_taxonomy_file(write_tmp(DRIVE))
    probs = torch.rand(11, 3, 5)
    out = TaxonomyConverter().universal_probs_to(tax, probs)
    camvid = class_names("camvid-11")
    assert torch.allclose(out[3], probs[[camvid.index(c) for c in ("Building", "Tree", "Sidewalk")]].sum(0))
    with pytest.raises(TaxonomyError, match=r"C = 11 \(camvid-11, the source of "):
        TaxonomyConverter().universal_probs_to(tax, torch.rand(194, 3, 5))


def write_tmp(text: str) -> str:
    import tempfile

    folder = Path(tempfile.mkdtemp())
    return write(folder, text)


HEADER = "id\tname\tcamvid-11\n"

BAD = [
    (
        HEADER + "0\tdrivable\tRoda\n1\tsky\tSky\n",
        ["{f}:2: unknown camvid-11 class 'Roda' (closest: 'Road')"],
    ),
    (
        HEADER + "0\tdrivable\tRoad\n1\tpaved\tSidewalk; Road\n",
        [
            "{f}:3: camvid-11 class 'Road' is in two rows: 'paved' and 'drivable' (line 2); a class can be summed into "
            "one row only"
        ],
    ),
    (HEADER + "0\tsky\tSky\n0\tground\tRoad\n", ["{f}:3: duplicate id 0 (also on line 2)"]),
    (HEADER + "0\tsky\tSky\n1\tsky\tRoad\n", ["{f}:3: duplicate name 'sky' (also on line 2)"]),
    (HEADER + "0\tsky\tSky\n2\tground\tRoad\n", ["{f}:3: id 2 is not in 0..1 (ids are 0..N-1 for the N = 2 rows)"]),
    (HEADER + "0\tsky\tSky\nx\tground\tRoad\n", ["{f}:3: id 'x' is not an integer"]),
    (HEADER + "0\tsky\n", ["{f}:2: expected 3 tab-separated columns (id, name, camvid-11 classes), found 2"]),
    (
        "id\tname\tcamvid11\n0\tsky\tSky\n",
        ["{f}:1: unknown SOURCE taxonomy 'camvid11' (closest: 'camvid-11', 'camvid-32')"],
    ),
    (
        "id,name,universal\n0,sky,sky\n",
        [
            "{f}:1: expected the header 'id<TAB>name<TAB>SOURCE' (SOURCE: universal or a taxonomy a model predicts), "
            "found 'id,name,universal'; the columns must be separated by tabs"
        ],
    ),
    (HEADER, ["{f}:1: no classes below the header"]),
    (
        "# name: camvid-11\n" + HEADER + "0\tsky\tSky\n",
        ["{f}:1: name 'camvid-11' is a built-in taxonomy's; give the file another ('# name: ...')"],
    ),
    (
        "# palette: 1,2,3\n" + HEADER + "0\tsky\tSky\n1\tground\tRoad\n",
        ["{f}:1: the palette has 1 colours for 2 classes ('R,G,B; R,G,B; ...' by id)"],
    ),
    (
        "# palette: 1,2,300\n" + HEADER + "0\tsky\tSky\n",
        ["{f}:1: palette colour '1,2,300' is not R,G,B with values 0..255"],
    ),
    (
        "id\tname\tuniversal\n" + "".join(f"{i}\tc{i}\t\n" for i in range(255)),
        ["{f}:256: 255 classes; a taxonomy file has at most 254 (label 255 means unlabeled)"],
    ),
    (
        "# name: my drive\n" + HEADER + "0\tsky\tSky\n",
        ["{f}:1: name 'my drive' may hold only letters, digits and . _ + - (it names output folders)"],
    ),
    (
        HEADER + "0\tsky\tSky; Sky\n",
        ["{f}:2: camvid-11 class 'Sky' is listed twice in 'sky'"],
    ),
]


@pytest.mark.parametrize(("text", "messages"), BAD)
def test_each_bad_file_has_its_exact_message(tmp_path, text, messages):
    path = write(tmp_path, text)
    expected = [m.format(f=path) for m in messages]
    assert check_taxonomy_file(path) == expected
    with pytest.raises(TaxonomyError) as exc:
        load_taxonomy_file(path)
    assert str(exc.value) == expected[0]
    assert "\n" not in str(exc.value)


def test_every_problem_at_once_and_the_first_raised(tmp_path):
    path = write(tmp_path, HEADER + "0\tdrivable\tRoda\n0\tdrivable\tSky\n5\tx\tSky\n")
    assert check_taxonomy_file(path) == [
        f"{path}:2: unknown camvid-11 class 'Roda' (closest: 'Road')",
        f"{path}:3: duplicate id 0 (also on line 2)",
        f"{path}:3: duplicate name 'drivable' (also on line 2)",
        f"{path}:4: camvid-11 class 'Sky' is in two rows: 'x' and 'drivable' (line 3); a class can be summed into one "
        "row only",
        f"{path}:4: id 5 is not in 0..2 (ids are 0..N-1 for the N = 3 rows)",
    ]
    with pytest.raises(TaxonomyError) as exc:
        load_taxonomy_file(path)
    assert (
        str(exc.value) == f"{path}:2: unknown camvid-11 class 'Roda' (closest: 'Road') (and 4 more: mseg taxonomy "
        f"check {path})"
    )


def test_a_spreadsheet_export_with_a_byte_order_mark_and_crlf(tmp_path):
    path = tmp_path / "excel.tsv"
    path.write_bytes("\ufeffid\tname\tcamvid-11\r\n0\tsky\tSky\r\n1\tground\tRoad; Sidewalk \r\n".encode())
    tax = load_taxonomy_file(path)
    assert tax.classes == ("sky", "ground") and tax.universal[1] == ("Road", "Sidewalk")


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(InputError, match=r"nope\.tsv: no such taxonomy file$"):
        resolve_taxonomy(str(tmp_path / "nope.tsv"))
    with pytest.raises(TaxonomyError, match=r"unknown taxonomy 'camvid-12'.* \(or give a taxonomy file: a path ending"):
        resolve_taxonomy("camvid-12")


def test_a_source_the_model_does_not_predict(tmp_path):
    tax = load_taxonomy_file(write(tmp_path, DRIVE))
    with pytest.raises(TaxonomyError) as exc:
        TaxonomyConverter().universal_to_test_matrix(tax, source="universal")
    assert str(exc.value) == (
        f"{tax.origin}:3: SOURCE 'camvid-11', but the probabilities come from 'universal': write the file over "
        "universal classes (header 'id<TAB>name<TAB>universal')"
    )


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_check(capsys, tmp_path):
    good = write(tmp_path, DRIVE, "drive.tsv")
    code, out, err = run(capsys, "taxonomy", "check", good)
    assert code == 0 and err == ""
    summary = "taxonomy 'drive', 4 classes over camvid-11; camvid-11 classes in no row (summed into none): none"
    assert out == f"{good}: {summary}\n"
    bad = write(tmp_path, HEADER + "0\tdrivable\tRoda\n0\tsky\tSky\n")
    code, out, err = run(capsys, "taxonomy", "check", bad)
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"{bad}:2: unknown camvid-11 class 'Roda' (closest: 'Road')",
        f"{bad}:3: duplicate id 0 (also on line 2)",
        f"2 problems in {bad}",
    ]
    code, _, err = run(capsys, "taxonomy", "check", str(tmp_path / "nope.tsv"))
    assert code == 2 and err == f"mseg taxonomy: error: {tmp_path / 'nope.tsv'}: no such taxonomy file\n"


def test_cli_show_and_map(capsys, tmp_path):
    path = write(tmp_path, DRIVE, "drive.tsv")
    code, out, _ = run(capsys, "taxonomy", "show", path)
    assert code == 0 and "Car (3), Pedestrian (6), Bicyclist (10)" in out and "70,130,180" in out
    code, out, _ = run(capsys, "taxonomy", "show", path, "--json")
    data = json.loads(out)
    assert code == 0 and data["source"] == "camvid-11" and data["classes"][0]["source_ids"] == [5]
    code, out, _ = run(capsys, "taxonomy", "map", "--from", "camvid-11", "--to", path, "--json")
    rows = json.loads(out)["map"]
    assert code == 0 and rows[5] == {"source_id": 5, "source": "Road", "target_id": 0, "target": "drivable"}
    street = write(tmp_path, "id\tname\tuniversal\n0\tground\troad\n1\tsky\tsky\n", "street.tsv")
    code, out, _ = run(capsys, "taxonomy", "map", "--from", "universal", "--to", street, "--json")
    rows = json.loads(out)["map"]
    assert code == 0 and len(rows) == 194 and np.sum([r["target_id"] is not None for r in rows]) == 2
    code, _, err = run(capsys, "taxonomy", "map", "--from", "universal", "--to", path)
    assert code == 2 and err.startswith(f"mseg taxonomy: error: {path}:3: SOURCE 'camvid-11', but")
