"""A taxonomy file as the output taxonomy of a model: labels, probabilities, overlay colours and the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from mseg_semantic import Segmenter
from mseg_semantic.cli import main
from mseg_semantic.errors import TaxonomyError
from mseg_semantic.examples import example_path
from mseg_semantic.fileio import read_label
from mseg_semantic.taxonomy import class_names, load_taxonomy_file

DRIVE_ROWS = {
    "drivable": ["Road"],
    "obstacle": ["Car", "Pedestrian", "Bicyclist", "Fence", "SignSymbol", "Column_Pole"],
    "sky": ["Sky"],
    "other": ["Building", "Tree", "Sidewalk"],
}
COLORS = [(128, 64, 128), (220, 20, 60), (70, 130, 180), (90, 90, 90)]


@pytest.fixture(scope="module")
def drive_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("taxonomy") / "drive.tsv"
    palette = "; ".join(",".join(str(v) for v in color) for color in COLORS)
    rows = "".join(f"{i}\t{name}\t{'; '.join(sources)}\n" for i, (name, sources) in enumerate(DRIVE_ROWS.items()))
    path.write_text(f"# name: drive\n# palette: {palette}\nid\tname\tcamvid-11\n{rows}", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rgb = cv2.imread(str(example_path()))[:, :, ::-1]
    return np.ascontiguousarray(cv2.resize(rgb, (582, 437), interpolation=cv2.INTER_AREA))


def test_labels_are_the_argmax_of_the_summed_source_probabilities(drive_file, image):
    source = Segmenter().predict_proba(image)  # (11, H, W) over camvid-11, computed without the file
    camvid = class_names("camvid-11")
    summed = np.stack([source[[camvid.index(c) for c in cs]].sum(0) for cs in DRIVE_ROWS.values()])
    expected = summed.argmax(0)

    for output in (str(drive_file), load_taxonomy_file(drive_file)):
        seg = Segmenter(output_taxonomy=output)
        assert seg.class_names == list(DRIVE_ROWS) and seg.output_taxonomy == "drive"
        labels = seg.predict(image)
        probs = seg.predict_proba(image)
        assert labels.dtype == np.uint8 and probs.shape == (4, *image.shape[:2])
        np.testing.assert_allclose(probs, summed, atol=1e-5)
        # Summing before or after averaging windows and flips rounds differently: only near-ties may differ.
        top2 = np.sort(summed, axis=0)[-2:]
        differ = labels != expected
        assert (top2[1] - top2[0])[differ].max(initial=0) < 1e-5
        assert differ.mean() < 1e-4 and set(np.unique(labels)) == {0, 1, 2, 3}


def test_builtin_output_taxonomy_is_unchanged(image):
    own = Segmenter().predict(image)
    assert np.array_equal(Segmenter(output_taxonomy="camvid-11").predict(image), own)


def test_a_file_over_another_source_than_the_model_predicts(tmp_path):
    path = tmp_path / "street.tsv"
    path.write_text("id\tname\tuniversal\n0\tground\troad\n1\tsky\tsky\n", encoding="utf-8")
    with pytest.raises(TaxonomyError) as exc:
        Segmenter(output_taxonomy=str(path))
    assert str(exc.value) == (
        f"{path}:1: SOURCE 'universal', but the model predicts 'camvid-11': write the file over camvid-11 classes "
        "(header 'id<TAB>name<TAB>camvid-11')"
    )


def test_demo_with_a_taxonomy_file(drive_file, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["demo", "--example", "--output-taxonomy", str(drive_file), "--out", str(out), "--quiet"]
    argv += ["--outputs", "gray,color,overlay,probs"]
    assert main(argv) == 0
    labels = read_label(out / "dashcam_comma2k19_gray.png")
    color = cv2.imread(str(out / "dashcam_comma2k19_color.png"))[:, :, ::-1]
    for k, rgb in enumerate(COLORS):
        assert (color[labels == k] == rgb).all()
    record = json.loads((out / "manifest.jsonl").read_text().splitlines()[-1])
    assert record["taxonomy"] == "drive" and record["taxonomy_file"] == str(drive_file.resolve())
    assert len(record["taxonomy_sha256"]) == 64 and set(record["histogram"]) == set(DRIVE_ROWS)
    with np.load(out / "dashcam_comma2k19_probs.npz") as saved:
        assert list(saved["class_names"]) == list(DRIVE_ROWS) and str(saved["taxonomy"]) == "drive"
    capsys.readouterr()
    assert main(argv) == 0 and "1 already done" in capsys.readouterr().out  # the same file: nothing redone


def test_demo_reports_a_bad_file_before_loading_the_model(tmp_path, capsys):
    path = tmp_path / "bad.tsv"
    path.write_text("id\tname\tcamvid-11\n0\tdrivable\tRoda\n", encoding="utf-8")
    assert main(["demo", "--example", "--output-taxonomy", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err == f"mseg demo: error: {path}:2: unknown camvid-11 class 'Roda' (closest: 'Road')\n"


@pytest.fixture(scope="module")
def drive_dataset(drive_file, image, tmp_path_factory) -> Path:
    """A one-image dataset whose ground truth is in the drive taxonomy (the bundled model's own labels)."""
    root = tmp_path_factory.mktemp("drive-data")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    cv2.imwrite(str(root / "images" / "a.png"), image[:, :, ::-1])
    labels = Segmenter(output_taxonomy=str(drive_file)).predict(image)
    cv2.imwrite(str(root / "labels" / "a.png"), labels)
    (root / "val.txt").write_text("images/a.png labels/a.png\n")
    return root


def test_eval_with_ground_truth_in_a_taxonomy_file(drive_file, drive_dataset, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["eval", "--dataset-taxonomy", str(drive_file), "--data-root", str(drive_dataset)]
    argv += ["--list", str(drive_dataset / "val.txt"), "--out", str(out), "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "drive" and metrics["taxonomy"] == "drive" and metrics["regime"] == "own-taxonomy"
    assert metrics["class_names"] == list(DRIVE_ROWS) and metrics["taxonomy_file"] == str(drive_file.resolve())
    assert metrics["mIoU"] == pytest.approx(100.0) and metrics["pixel_accuracy"] == pytest.approx(100.0)


def test_eval_refuses_what_a_taxonomy_file_cannot_score(drive_file, drive_dataset, tmp_path, capsys):
    base = ["eval", "--dataset-taxonomy", str(drive_file), "--data-root", str(drive_dataset), "--quiet"]
    assert main([*base, "--out", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err == (
        "mseg eval: error: --dataset-taxonomy needs --list: the 'image label' lines of ground truth in your classes\n"
    )
    bad = drive_dataset / "bad"
    bad.mkdir()
    cv2.imwrite(str(bad / "a.png"), np.full((437, 582), 7, np.uint8))
    (bad / "val.txt").write_text("../images/a.png a.png\n")
    assert main([*base, "--data-root", str(bad), "--list", str(bad / "val.txt"), "--out", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "label values [7] are not classes of 'drive' (valid: 0..3 and 255 = unlabeled)" in err
    street = tmp_path / "street.tsv"
    street.write_text("id\tname\tuniversal\n0\tground\troad\n1\tsky\tsky\n", encoding="utf-8")
    argv = ["eval", "--dataset-taxonomy", str(street), "--data-root", str(drive_dataset), "--quiet"]
    assert main([*argv, "--list", str(drive_dataset / "val.txt"), "--out", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err == (
        f"mseg eval: error: {street}:1: SOURCE 'universal', but the model predicts 'camvid-11': write the file over "
        "camvid-11 classes (header 'id<TAB>name<TAB>camvid-11')\n"
    )
