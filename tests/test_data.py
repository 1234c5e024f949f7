"""Split lists and image/label reading, on the real CamVid copy and on hand-made broken files."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mseg_semantic import InputError
from mseg_semantic.data import SegmentationDataset, available_splits, read_list


def test_shipped_original_lists(tmp_path):
    assert available_splits("camvid-11") == ["test", "train", "val"]
    assert available_splits("coco-panoptic-133") == ["val", "val_small"]
    assert available_splits("universal") == []
    (tmp_path / "Camvid").mkdir()
    entries = read_list(None, tmp_path, dataset="camvid-11", split="train")
    assert len(entries) == 367
    assert entries[0].image == tmp_path / "Camvid" / "701_StillsRaw_full" / "0001TP_006690.png"
    assert entries[0].label == tmp_path / "Camvid" / "semseg11" / "0001TP_006690_L.png"
    assert len(read_list(None, tmp_path, dataset="ade20k-150", split="val")) == 2000
    assert len(read_list(None, tmp_path, dataset="kitti-19", split="test", require_labels=False)) == 200
    with pytest.raises(InputError, match="no 'train' list ships for coco-panoptic-133; available: val, val_small"):
        read_list(None, tmp_path, dataset="coco-panoptic-133", split="train")
    # The COCO train lists that `mseg data prepare` writes below the data root are found there.
    generated = tmp_path / "COCOPanoptic" / "mseg_lists" / "coco-panoptic-133" / "train.txt"
    generated.parent.mkdir(parents=True)
    generated.write_text("images/train2017/000000000009.jpg semantic_annotations133/train2017/000000000009.png\n")
    assert available_splits("coco-panoptic-133", tmp_path) == ["train", "val", "val_small"]
    [entry] = read_list(None, tmp_path, dataset="coco-panoptic-133", split="train")
    assert entry.label == tmp_path / "COCOPanoptic" / "semantic_annotations133" / "train2017" / "000000000009.png"
    [entry] = read_list(None, tmp_path / "COCOPanoptic", dataset="coco-panoptic-133", split="train")
    assert entry.image == tmp_path / "COCOPanoptic" / "images" / "train2017" / "000000000009.jpg"


def test_real_camvid_pairs(camvid11):
    root = camvid11
    entries = read_list(root / "val.txt", root)
    assert len(entries) == 101 and entries[0].source.endswith("val.txt:1")
    image, label = SegmentationDataset(entries, "camvid-11")[0]
    assert image.shape == (360, 480, 3) and image.dtype == np.uint8
    assert label.shape == (360, 480) and label.dtype == np.int64 and set(np.unique(label)) <= {*range(11), 255}


def test_bad_lists_and_samples_name_file_and_line(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((4, 6, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "a_L.png"), np.full((4, 6), 3, np.uint8))
    cv2.imwrite(str(tmp_path / "small_L.png"), np.zeros((2, 6), np.uint8))
    cv2.imwrite(str(tmp_path / "bad_L.png"), np.full((4, 6), 40, np.uint8))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "one.txt").write_text("a.png a_L.png\n\na.png\n")
    with pytest.raises(InputError, match=r"one\.txt:3: no label path"):
        read_list(tmp_path / "one.txt", tmp_path)
    (tmp_path / "three.txt").write_text("a.png a_L.png extra\n")
    with pytest.raises(InputError, match=r"three\.txt:1: expected 'image_path label_path', got 3 fields"):
        read_list(tmp_path / "three.txt", tmp_path)
    (tmp_path / "ok.txt").write_text("a.png a_L.png\na.png small_L.png\na.png bad_L.png\nmissing.png a_L.png\n"
                                      "broken.png a_L.png\n")  # fmt: skip
    data = SegmentationDataset(read_list(tmp_path / "ok.txt", tmp_path), "camvid-11")
    assert data[0][1].max() == 3
    with pytest.raises(InputError, match=r"ok\.txt:2: label .*small_L\.png is 6x2 but image .*a\.png is 6x4"):
        data[1]
    with pytest.raises(InputError, match=r"ok\.txt:3: .*bad_L\.png: label values \[40\]"):
        data[2]
    with pytest.raises(InputError, match=r"ok\.txt:4: .*missing\.png: no such file"):
        data[3]
    with pytest.raises(InputError, match=r"ok\.txt:5: .*broken\.png: not a readable image"):
        data[4]
    with pytest.raises(InputError, match="data root does not exist"):
        read_list(tmp_path / "ok.txt", tmp_path / "nope")
