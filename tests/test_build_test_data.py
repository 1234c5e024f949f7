"""tools/build_test_data.py: the CamVid-11 test data folder built from SegNet's layout (here a tiny synthetic one)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mseg_semantic.data import read_list
from mseg_semantic.fileio import read_image, read_label
from mseg_semantic.taxonomy import class_names

SEGNET = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
          "Bicyclist"]  # fmt: skip
SAME = {"Pole": "Column_Pole", "Pavement": "Sidewalk"}  # SegNet's names for camvid-11's


@pytest.fixture(scope="module")
def build_test_data():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    try:
        import build_test_data
    finally:
        sys.path.pop(0)
    return build_test_data


def test_camvid11_from_segnets_layout(build_test_data, tmp_path, capsys):
    rng = np.random.default_rng(0)
    segnet = tmp_path / "CamVid"
    photos, labels = {}, {}
    for split, names in (("train", ["0001TP_006690", "Seq05VD_f00000"]), ("val", ["0016E5_07959"])):
        for folder in (split, f"{split}annot"):
            (segnet / folder).mkdir(parents=True)
        for name in names:
            photos[name] = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            labels[name] = rng.integers(0, 13, (6, 8), dtype=np.uint8)  # 11: Unlabelled, 12: not a SegNet value
            Image.fromarray(photos[name]).save(segnet / split / f"{name}.png")
            Image.fromarray(labels[name]).save(segnet / f"{split}annot" / f"{name}.png")
    assert build_test_data.main(["camvid11", str(segnet), str(tmp_path / "shared")]) == 0
    assert "MSEG_SHARED=" in capsys.readouterr().out
    root = tmp_path / "shared" / "data" / "camvid11"
    assert (root / "val.txt").read_text() == "images/0016E5_07959.png labels/0016E5_07959.png\n"
    entries = read_list(root / "train.txt", root)
    assert [Path(e.image).name for e in entries] == ["0001TP_006690.png", "Seq05VD_f00000.png"]
    camvid = class_names("camvid-11")
    for name, segnet_label in labels.items():
        assert (read_image(root / "images" / f"{name}.png") == photos[name]).all()
        label = read_label(root / "labels" / f"{name}.png")
        assert label.dtype == np.uint8 and label.shape == segnet_label.shape
        for value in range(13):
            got = set(label[segnet_label == value].tolist())
            if value < 11:
                assert got <= {camvid.index(SAME.get(SEGNET[value], SEGNET[value]))}, value
            else:
                assert got <= {255}, value
        assert set(np.unique(label)) - {255} and 255 in label  # the random labels hit both kinds


def test_a_wrong_folder_is_named(build_test_data, tmp_path):
    with pytest.raises(SystemExit, match=r"train: no such folder \(give the CamVid/ folder"):
        build_test_data.main(["camvid11", str(tmp_path), str(tmp_path / "shared")])
