"""A universal taxonomy of the user's own (a master table like MSeg_master.tsv) and a dataset of the user's own:
the original table reproduces the built-in maps, every bad table is reported with its line, and a short training
run on a table that adds a row gives a model with one more class that `mseg demo` uses without the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TINY_HRNET, failure, run_mseg

from mseg_semantic.cli import main
from mseg_semantic.configs import ConfigError
from mseg_semantic.errors import TaxonomyError
from mseg_semantic.fileio import read_label, write_label
from mseg_semantic.taxonomy import TaxonomyConverter, class_names, get_taxonomy
from mseg_semantic.taxonomy.master import check_master, load_master, read_names
from mseg_semantic.taxonomy.tables import DEFAULT_TRAIN_DATASETS, TEST_DATASETS, register_taxonomy
from mseg_semantic.training import config_from_dict

MASTER = Path(__file__).parent / "data" / "mseg-api" / "mseg" / "class_remapping_files" / "MSeg_master.tsv"
# What each class of "my-streets" (CamVid's images and labels under a name of the user's own) becomes.
MY_STREETS = {
    "building": "Building", "vegetation": "Tree", "sky": "Sky", "car": "Car", "road": "Road",
    "person": "Pedestrian", "fence": "Fence", "sidewalk_pavement": "Sidewalk", "bicyclist": "Bicyclist",
}  # fmt: skip
NEW_ROW = "column_pole"  # a row the table adds: CamVid's Column_Pole gets a class of its own


def master_lines() -> list[str]:
    return MASTER.read_text(encoding="utf-8").splitlines()


def write_master(path: Path, lines: list[str], name: str | None = None) -> Path:
    text = "\r\n".join(([f"# name: {name}"] if name else []) + lines)
    path.write_text(text, encoding="utf-8", newline="")
    return path


def with_column(lines: list[str], column: str, cells: dict[str, str], new_row: str | None = None) -> list[str]:
    """The table with a dataset column added (``cells``: row -> cell), and optionally a new row before unlabeled."""
    header = lines[0].split("\t")
    row_at = header.index("universal")
    out = [lines[0] + f"\t{column}"]
    for line in lines[1:]:
        cells_of = line.split("\t")
        if new_row and cells_of[row_at] == "unlabeled":
            blank = [""] * len(header)
            blank[row_at] = new_row
            out.append("\t".join(blank) + "\tColumn_Pole")
        out.append(line + "\t" + cells.get(cells_of[row_at], ""))
    return out


@pytest.fixture(scope="module")
def streets_master(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("master")
    names = folder / "my-streets_names.txt"
    names.write_text("\n".join(class_names("camvid-11")) + "\n")
    master = write_master(folder / "streets_master.tsv", with_column(master_lines(), "my-streets", MY_STREETS, NEW_ROW))
    return master, names


def test_the_original_table_reproduces_every_builtin_map():
    report = check_master(MASTER)
    assert report.errors == [] and report.taxonomy is not None
    master = register_taxonomy(report.taxonomy)
    assert master.classes == tuple(class_names("universal"))
    tc = TaxonomyConverter()
    for dataset in (*DEFAULT_TRAIN_DATASETS, "cityscapes-34"):
        assert np.array_equal(tc.lookup_table(dataset, master.name), tc.lookup_table(dataset, "universal")), dataset
    for test in TEST_DATASETS:
        assert np.array_equal(tc.universal_to_test_matrix(test, source=master.name), tc.universal_to_test_matrix(test))
    # The legacy and documentation columns are named in one note; nothing else is reported.
    assert len(report.notes) == 1 and "columns ignored" in report.notes[0] and "nyudepthv2-37" in report.notes[0]


def edited(tmp_path: Path, edit) -> str:
    lines = master_lines()
    edit(lines, lines[0].split("\t"))
    return str(write_master(tmp_path / "bad.tsv", lines))


def set_cell(lines: list[str], header: list[str], row: str, column: str, value: str) -> int:
    """Set one cell; returns the file line of the row."""
    at = header.index("universal")
    index = next(i for i, line in enumerate(lines) if line.split("\t")[at] == row)
    cells = lines[index].split("\t")
    cells[header.index(column)] = value
    lines[index] = "\t".join(cells)
    return index + 1


def test_each_bad_table_is_reported_with_its_line(tmp_path):
    found = {}

    def two_rows(lines, header):
        found["line"] = set_cell(lines, header, "car", "mapillary-public65", "{Car, Caravan, Curb}")

    path = edited(tmp_path, two_rows)
    first = next(i + 1 for i, line in enumerate(master_lines()) if "Curb," in line)
    assert check_master(path).errors == [
        f"{path}:{found['line']}: mapillary-public65 class 'Curb' is in two rows: 'sidewalk_pavement' (line {first}) "
        "and 'car'; a dataset class becomes one row only"
    ]

    def unknown(lines, header):
        found["line"] = set_cell(lines, header, "road", "cityscapes-19", "raod")

    path = edited(tmp_path, unknown)
    assert check_master(path).errors[0] == (
        f"{path}:{found['line']}: 'raod' is not a cityscapes-19 class (closest: 'road')"
    )

    def bad_test_cell(lines, header):
        found["line"] = set_cell(lines, header, "road", "camvid-11", "Raod")

    path = edited(tmp_path, bad_test_cell)
    assert check_master(path).errors == [
        f"{path}:{found['line']}: 'Raod' is not a camvid-11 test class (closest: 'Road')"
    ]

    def duplicate_row(lines, header):
        lines.insert(5, lines[3])

    path = edited(tmp_path, duplicate_row)
    row = master_lines()[3].split("\t")[master_lines()[0].split("\t").index("universal")]
    assert check_master(path).errors[0].startswith(f"{path}:6: row {row!r} appears twice (also on line 4)")

    def short_row(lines, header):
        lines[9] = "\t".join(lines[9].split("\t")[:5])

    path = edited(tmp_path, short_row)
    assert check_master(path).errors == [f"{path}:10: expected 30 tab-separated columns like the header, found 5"]

    path = write_master(tmp_path / "nocol.tsv", ["name\tbdd", "road\troad"])
    assert check_master(path).errors == [
        f"{path}:1: no 'universal' column in the header (it names each row's class); found ['name', 'bdd']"
    ]
    with pytest.raises(TaxonomyError, match=r"nocol.tsv:1: no 'universal' column"):
        load_master(path)


def test_classes_in_no_row_and_test_classes_fed_by_none_are_notes(tmp_path):
    def drop(lines, header):
        set_cell(lines, header, "road", "cityscapes-19", "")  # road: in no row of cityscapes-19 any more

    path = edited(tmp_path, drop)
    report = check_master(path)
    assert report.errors == [] and report.taxonomy is not None
    assert f"{path}:1: cityscapes-19: 1 class(es) in no row become unlabeled: road" in report.notes
    table = TaxonomyConverter().lookup_table("cityscapes-19", register_taxonomy(report.taxonomy).name)
    assert table[0] == 255  # cityscapes-19 road (label 0) is now ignored in training

    lines = [line for line in master_lines() if line.split("\t")[19] != "sky"]
    path = write_master(tmp_path / "nosky.tsv", lines)
    notes = check_master(path).notes
    assert (
        f"{path}:1: camvid-11: test class 'Sky' is fed by no row (its universal classes sky are not rows); "
        "it will always have probability 0"
    ) in notes


def test_the_command_line_lists_every_problem(tmp_path, capsys):
    def two(lines, header):
        set_cell(lines, header, "road", "cityscapes-19", "raod")
        set_cell(lines, header, "sky", "camvid-11", "Skye")

    path = edited(tmp_path, two)
    assert main(["taxonomy", "check", "--master", path]) == 2
    err = capsys.readouterr().err
    assert "'raod' is not a cityscapes-19 class" in err and "'Skye' is not a camvid-11 test class" in err
    assert err.strip().endswith(f"2 problems in {path}")
    assert main(["taxonomy", "check", "--master", str(MASTER)]) == 0
    assert "universal taxonomy 'MSeg_master', 194 classes" in capsys.readouterr().out


def test_names_lists_of_ones_own_are_checked(tmp_path, streets_master, capsys):
    master, names = streets_master
    assert read_names(names) == tuple(class_names("camvid-11"))
    bad = tmp_path / "names.txt"
    bad.write_text("road\ncar\nroad\n")
    with pytest.raises(TaxonomyError, match=r"names.txt:3: class 'road' is named twice \(also on line 1\)"):
        read_names(bad)
    # Without its names list, the dataset's column is ignored; with it, the column is read and checked.
    assert main(["taxonomy", "check", "--master", str(master)]) == 0
    assert "columns ignored (no dataset of that name): " in capsys.readouterr().err
    assert main(["taxonomy", "check", "--master", str(master), "--names", f"my-streets={names}"]) == 0
    out = capsys.readouterr().out
    assert "195 classes" in out and "my-streets" in out


def config_dict(camvid: Path, master: Path | None, names: Path | None, train_list: Path, **changes) -> dict:
    dataset = {"name": "my-streets", "root": str(camvid), "train_list": str(train_list)}
    if names is not None:
        dataset["names"] = str(names)
    config = {
        "datasets": [dataset],
        "taxonomy": {"mode": "universal", "master": None if master is None else str(master)},
        "batch_size": 2, "max_iters": 3, "model": {"arch": "hrnet", "hrnet": TINY_HRNET},
        "transform": {"short_size": 96, "crop": [64, 96]}, "device": "cpu", "workers": 0, "log_every": 1,
    }  # fmt: skip
    config.update(changes)
    return config


def test_training_configs_with_tables_of_ones_own_fail_clearly(camvid11, streets_master, tmp_path):
    master, names = streets_master
    listed = tmp_path / "train.txt"
    listed.write_text("images/0001TP_006690.png labels/0001TP_006690.png\n")
    config = config_from_dict(config_dict(camvid11, master, names, listed))
    assert (config.num_classes, config.model_taxonomy) == (195, "streets_master")
    cases = [
        (config_dict(camvid11, None, names, listed), "datasets.0.names", "set taxonomy.master=FILE"),
        (config_dict(camvid11, master, names, listed, taxonomy={"mode": "naive", "master": str(master)}),
         "taxonomy.master", "a master table defines a universal taxonomy; use taxonomy.mode universal, not 'naive'"),
        (config_dict(camvid11, master, None, listed, datasets=[{"name": "my-lanes", "root": str(camvid11)}]),
         "datasets.0.name", "; for a dataset of your own, give its names list too (datasets.0.names=FILE)"),
        (config_dict(camvid11, tmp_path / "none.tsv", names, listed), "taxonomy.master", "none.tsv: no such"),
    ]  # fmt: skip
    for raw, key, message in cases:
        with pytest.raises(ConfigError) as caught:
            config_from_dict(raw)
        assert key in str(caught.value) and message in str(caught.value), str(caught.value)
    plain = config_dict(camvid11, MASTER, None, listed)
    plain["datasets"] = ["camvid-11"]
    with pytest.raises(ConfigError, match="cannot train camvid-11 in the MSeg_master taxonomy: no label mapping"):
        config_from_dict(plain)
    plain["datasets"] = ["camvid-11", "kitti-34"]
    plain["taxonomy"]["master"] = str(master)
    with pytest.raises(ConfigError, match="kitti-34 has no column in the master table"):
        config_from_dict(plain)


@pytest.mark.processes
def test_a_table_that_adds_a_row_trains_a_model_that_demo_uses_without_the_file(camvid11, streets_master, tmp_path):
    master, names = streets_master
    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(master, folder / "master.tsv")
    shutil.copy(names, folder / "names.txt")
    listed = tmp_path / "train.txt"
    listed.write_text("\n".join((camvid11 / "train.txt").read_text().splitlines()[:2]) + "\n")
    config = config_dict(camvid11, folder / "master.tsv", folder / "names.txt", listed)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    done = run_mseg(1, "train", str(path), "--out", str(out), "--quiet")
    assert done.returncode == 0, failure(done)
    shutil.rmtree(folder)  # the model must not need the table any more

    # This process never read the table (training ran in its own process), and the files are gone.
    with pytest.raises(TaxonomyError, match="unknown taxonomy 'master'"):
        get_taxonomy("master")
    image = camvid11 / "images" / "0001TP_006690.png"
    model = str(out / "model.safetensors")
    demo = tmp_path / "demo"
    args = ["--config", "360_ss", "--base-size", "96", "--crop-size", "97", "--outputs", "gray,probs", "--quiet"]
    assert main(["demo", str(image), "--model", model, "--out", str(demo), *args]) == 0
    saved = np.load(demo / "0001TP_006690_probs.npz")
    names_out = [str(n) for n in saved["class_names"]]
    assert len(names_out) == 195 and names_out[-1] == NEW_ROW and names_out[:194] == class_names("universal")
    assert str(saved["taxonomy"]) == "master"  # the name of the file it was trained with
    assert read_label(demo / "0001TP_006690_gray.png").max() < 195
    # Zero-shot on camvid-11 through the table's own camvid-11 column, still without the file.
    cv = tmp_path / "cv"
    assert main(["demo", str(image), "--model", model, "--out", str(cv), "--output-taxonomy", "camvid-11", *args]) == 0
    assert [str(n) for n in np.load(cv / "0001TP_006690_probs.npz")["class_names"]] == class_names("camvid-11")
    scored = tmp_path / "eval"
    argv = ["eval", "--model", model, "--dataset", "camvid-11", "--data-root", str(camvid11), "--list", str(listed)]
    assert main([*argv, "--out", str(scored), *args[:-3], "--quiet"]) == 0
    metrics = json.loads((scored / "metrics.json").read_text())
    assert (metrics["regime"], metrics["model_taxonomy"], metrics["num_images"]) == ("zero-shot", "master", 2)


def test_the_builtin_table_written_out_reads_back_to_the_same_maps(tmp_path, capsys):
    out = tmp_path / "mine.tsv"
    assert main(["taxonomy", "master", "--out", str(out)]) == 0
    assert main(["taxonomy", "master", "--out", str(out)]) == 2
    assert f"{out} already exists; pass --overwrite to replace it" in capsys.readouterr().err
    report = check_master(out)
    assert report.errors == report.notes == []
    mine = register_taxonomy(report.taxonomy)
    tc = TaxonomyConverter()
    for dataset in (*DEFAULT_TRAIN_DATASETS, "cityscapes-34"):
        assert np.array_equal(tc.lookup_table(dataset, mine.name), tc.lookup_table(dataset, "universal")), dataset
    for test in TEST_DATASETS:
        assert np.array_equal(tc.universal_to_test_matrix(test, source=mine.name), tc.universal_to_test_matrix(test))


def test_verify_checks_a_dataset_of_ones_own_with_its_column(camvid11, streets_master, tmp_path, capsys):
    master, names = streets_master
    root = tmp_path / "streets"
    (root / "labels").mkdir(parents=True)
    shutil.copytree(camvid11 / "images", root / "images", ignore=lambda d, files: files[3:])
    stems = sorted(p.stem for p in (root / "images").iterdir())
    for stem in stems:
        shutil.copy(camvid11 / "labels" / f"{stem}.png", root / "labels" / f"{stem}.png")
    listed = root / "train.txt"
    listed.write_text("".join(f"images/{s}.png labels/{s}.png\n" for s in stems))
    args = ["data", "verify", "my-streets", "--root", str(root), "--names", str(names), "--list", str(listed)]
    assert main([*args, "--master", str(master), "--quiet"]) == 0, capsys.readouterr()
    captured = capsys.readouterr()
    assert "my-streets: verified" in captured.out
    assert "my-streets: 1 class(es) in no row become unlabeled: SignSymbol" in captured.err

    label = read_label(root / "labels" / f"{stems[0]}.png")
    label[0, 0] = 11  # camvid-11 has classes 0..10
    write_label(root / "labels" / f"{stems[0]}.png", label)
    assert main([*args, "--master", str(MASTER), "--quiet"]) == 1
    out = capsys.readouterr().out
    bad = root / "labels" / f"{stems[0]}.png"
    assert f"{listed}:1: label {bad} holds values [11] that are not classes (0..10 or 255)" in out
    assert f"{MASTER}: no column 'my-streets': what its classes become in the table" in out
    assert main(["data", "verify", "my-streets", "--root", str(root), "--names", str(names)]) == 2
    assert "give its split lists with --list FILE" in capsys.readouterr().err


def test_a_checkpoint_records_its_table_and_a_taxonomy_file_can_sum_its_classes(streets_master, tmp_path):
    from conftest import tiny_hrnet

    from mseg_semantic import Segmenter
    from mseg_semantic.models import save_checkpoint
    from mseg_semantic.models.weights import read_metadata
    from mseg_semantic.zoo import load_model

    master = register_taxonomy(load_master(streets_master[0], {"my-streets": read_names(streets_master[1])}))
    path = save_checkpoint(tiny_hrnet(195), tmp_path / "m.safetensors", taxonomy=master.name)
    metadata = read_metadata(path)
    assert metadata["taxonomy_format"] == "master" and metadata["taxonomy_table"] == master.table
    assert load_model(path).taxonomy == master.name
    with pytest.raises(TaxonomyError, match="has 195 output classes but taxonomy 'universal' has 194"):
        save_checkpoint(tiny_hrnet(195), tmp_path / "bad.safetensors", taxonomy="universal")

    poles = tmp_path / "poles.tsv"
    poles.write_text(f"id\tname\t{master.name}\n0\tpole\t{NEW_ROW}; pole\n1\tground\troad; sidewalk_pavement\n")
    seg = Segmenter(path, output_taxonomy=poles, base_size=64, crop_size=65, scales=[1.0], flip=False)
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    universal = Segmenter(path, base_size=64, crop_size=65, scales=[1.0], flip=False).predict_proba(image)
    index = master.classes.index
    pole, ground = [index(NEW_ROW), index("pole")], [index("road"), index("sidewalk_pavement")]
    summed = np.stack([universal[pole].sum(0), universal[ground].sum(0)])  # the sums, computed independently
    assert seg.class_names == ["pole", "ground"]
    assert np.allclose(seg.predict_proba(image), summed, atol=1e-5)


def test_serve_offers_the_test_taxonomies_a_table_has_columns_for(tmp_path):
    pytest.importorskip("fastapi", reason="needs the serve extra: pip install -e '.[serve]'")
    from mseg_semantic.serve.engine import output_taxonomies

    header = master_lines()[0].split("\t")
    keep = [i for i, name in enumerate(header) if name not in {"kitti-19", "voc2012", "scannet-20"}]
    lines = ["\t".join(line.split("\t")[i] for i in keep) for line in master_lines()]
    table = register_taxonomy(load_master(write_master(tmp_path / "t.tsv", lines, name="three-tests")))
    assert output_taxonomies(table.name) == ["three-tests", "camvid-11", "pascal-context-60", "wilddash-19"]
    assert output_taxonomies("universal") == ["universal", *TEST_DATASETS]
    assert output_taxonomies("camvid-11") == ["camvid-11"]
