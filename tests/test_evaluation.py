"""Evaluation: metrics as the original computes them, the scoring regimes, `mseg eval` and `mseg results`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import failure, run_mseg, tiny_hrnet

from mseg_semantic import TaxonomyError
from mseg_semantic.cli import main
from mseg_semantic.evaluation import ConfusionMatrix, intersection_and_union, plan_evaluation
from mseg_semantic.evaluation.runner import prediction_names
from mseg_semantic.models import save_checkpoint
from mseg_semantic.taxonomy import class_names

FAST = ["--base-size", "64", "--crop-size", "65", "--quiet"]


# ---------------------------------------------------------------------------- metrics
def test_original_intersection_and_union_case():
    inter, union, target = intersection_and_union(np.array([[1, 0], [1, 0]]), np.array([[255, 0], [255, 1]]), 2)
    assert inter.tolist() == [1, 0] and target.tolist() == [1, 1] and union.tolist() == [2, 1]


def test_miou_over_all_classes_absent_count_as_zero():
    # Three 2x2 images on camvid-11 with IoU 4/7, 2/5 and 1 for classes 0, 1, 2 -> mIoU 1.9714 / 11 = 0.1792,
    # the value of the original's accuracy-calculator test.
    preds = [np.array([[0, 0], [0, 0]]), np.array([[1, 1], [0, 1]]), np.array([[1, 2], [7, 4]])]
    gts = [np.array([[0, 0], [0, 0]]), np.array([[0, 0], [1, 1]]), np.array([[1, 2], [255, 255]])]
    cm = ConfusionMatrix(11)
    for p, g in zip(preds, gts, strict=True):
        cm.update(p, g)
    assert cm.matrix[:3, :3].tolist() == [[4, 2, 0], [1, 2, 0], [0, 0, 1]]
    m = cm.metrics()
    np.testing.assert_allclose(m.iou[:3], [4 / 7, 2 / 5, 1.0], atol=1e-9)
    assert (m.iou[3:] == 0).all()
    assert round(m.mean_iou, 4) == 0.1792
    assert m.mean_iou_present == pytest.approx((4 / 7 + 2 / 5 + 1) / 3)
    assert m.pixel_accuracy == pytest.approx(7 / 10)
    # Hand-made confusion matrix: same numbers.
    by_hand = ConfusionMatrix(3)
    by_hand.load_state(np.array([[4, 2, 0, 0], [1, 2, 0, 0], [0, 0, 1, 0]]))
    assert by_hand.metrics().mean_iou == pytest.approx((4 / 7 + 2 / 5 + 1) / 3)


def test_predictions_outside_the_taxonomy_count_against_the_target_only():
    cm = ConfusionMatrix(2)
    cm.update(np.array([255, 1, 0]), np.array([0, 1, 255]))  # pred 255 at a GT-0 pixel
    m = cm.metrics()
    assert m.iou.tolist() == pytest.approx([0.0, 1.0])
    assert cm.matrix.tolist() == [[0, 0], [0, 1]]


def test_excluded_classes_rule():
    plan = plan_evaluation("coco-panoptic-133", "universal")
    assert plan.regime == "universal-on-training" and plan.eval_taxonomy == "universal"
    assert plan.excluded == (
        5, 16, 18, 21, 22, 25, 26, 27, 29, 30, 31, 33, 44, 58, 59, 60, 61, 63, 65, 68, 69, 70, 71, 72, 73, 74, 75, 76,
        78, 79, 82, 83, 84, 86, 89, 91, 92, 93, 101, 108, 112, 113, 114, 122, 123, 124, 126, 127, 128, 130, 131, 132,
        133, 134, 140, 141, 143, 145, 146, 160, 161, 162, 163, 164, 165, 167, 170, 177, 183, 185, 189, 190,
    )  # fmt: skip
    cm = ConfusionMatrix(4)
    cm.update(np.array([0, 1, 2]), np.array([0, 1, 1]))
    assert cm.metrics(excluded=[3]).mean_iou == pytest.approx((1 + 0.5 + 0) / 3)
    assert cm.metrics().mean_iou == pytest.approx((1 + 0.5 + 0 + 0) / 4)


def test_scoring_regimes():
    assert plan_evaluation("camvid-11", "universal").regime == "zero-shot"
    assert plan_evaluation("camvid-11", "camvid-11").regime == "oracle"
    naive = plan_evaluation("voc2012", "naive")
    assert naive.regime == "naive" and naive.eval_taxonomy == "voc2012" and not naive.maps_labels
    on_train = plan_evaluation("ade20k-150-relabeled", "universal")
    assert on_train.maps_labels and len(on_train.excluded) == 194 - 141
    with pytest.raises(TaxonomyError, match="cannot score"):
        plan_evaluation("kitti-19", "camvid-11")


def test_prediction_names_are_unique():
    from mseg_semantic.data import ListEntry

    entries = [ListEntry(Path(f"/d/scene{i}/color/000800.jpg"), None, "x") for i in range(2)]
    entries.append(ListEntry(Path("/d/scene0/color/000900.jpg"), None, "x"))
    assert prediction_names(entries) == ["scene0_color_000800", "scene1_color_000800", "000900"]


# ---------------------------------------------------------------------------- mseg eval end to end
@pytest.fixture(scope="module")
def camvid(camvid11: Path) -> Path:
    return camvid11


@pytest.fixture(scope="module")
def oracle_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("oracle") / "tiny-camvid.safetensors"
    save_checkpoint(tiny_hrnet(11, seed=1), path, taxonomy="camvid-11")
    return path


def run_eval(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["eval", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_on_real_camvid_val_writes_every_output(camvid, oracle_checkpoint, tmp_path, capsys):
    out = tmp_path / "ev"
    code, stdout, err = run_eval(capsys, "--model", str(oracle_checkpoint), "--dataset", "camvid-11", "--data-root",
                                 str(camvid), "--list", str(camvid / "val.txt"), "--out", str(out), *FAST)  # fmt: skip
    assert code == 0, err
    assert "oracle" in err and "mIoU" in stdout
    for name in ("metrics.json", "results.txt", "report.md", "per_class_iou.png", "confusion_matrix.png"):
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == "camvid-11" and metrics["taxonomy"] == "camvid-11" and metrics["num_images"] == 101
    assert set(metrics["per_class_iou"]) == set(class_names("camvid-11"))
    matrix = np.array(metrics["confusion_matrix"])
    assert matrix.shape == (11, 11)
    gray = sorted((out / "gray").glob("*.png"))
    assert len(gray) == 101 and cv2.imread(str(gray[0]), cv2.IMREAD_UNCHANGED).shape == (360, 480)
    # The metrics recomputed from the saved predictions and the labels agree with metrics.json.
    cm = ConfusionMatrix(11)
    for line in (camvid / "val.txt").read_text().split("\n"):
        if line.strip():
            image, label = line.split()
            pred = cv2.imread(str(out / "gray" / (Path(image).stem + ".png")), cv2.IMREAD_UNCHANGED)
            cm.update(pred, cv2.imread(str(camvid / label), cv2.IMREAD_UNCHANGED))
    assert cm.matrix.tolist() == metrics["confusion_matrix"]
    assert round(100 * cm.metrics().mean_iou, 4) == metrics["mIoU"]
    assert (out / "results.txt").read_text().startswith(f"Eval result: mIoU/mAcc/allAcc {cm.metrics().mean_iou:.4f}/")

    # Predictions exist now: refused without --resume, reused with it.
    code, _, err = run_eval(capsys, "--model", str(oracle_checkpoint), "--dataset", "camvid-11", "--data-root",
                            str(camvid), "--list", str(camvid / "val.txt"), "--out", str(out), *FAST)  # fmt: skip
    assert code == 2 and "--resume" in err
    code, stdout, _ = run_eval(capsys, "--model", str(oracle_checkpoint), "--dataset", "camvid-11", "--data-root",
                               str(camvid), "--list", str(camvid / "val.txt"), "--out", str(out), "--resume",
                               *FAST)  # fmt: skip
    assert code == 0 and "0 predicted, 101 reused" in stdout
    assert json.loads((out / "metrics.json").read_text())["confusion_matrix"] == metrics["confusion_matrix"]


def test_zero_shot_universal_model_is_scored_in_the_test_taxonomy(camvid, tiny_checkpoint, tmp_path, capsys):
    lst = tmp_path / "val3.txt"
    lst.write_text("\n".join((camvid / "val.txt").read_text().split("\n")[:3]) + "\n")
    code, _, err = run_eval(capsys, "--model", str(tiny_checkpoint), "--dataset", "camvid-11", "--data-root",
                            str(camvid), "--list", str(lst), "--out", str(tmp_path / "z"), *FAST)  # fmt: skip
    assert code == 0, err
    metrics = json.loads((tmp_path / "z" / "metrics.json").read_text())
    assert metrics["regime"] == "zero-shot" and metrics["model_taxonomy"] == "universal"
    assert np.array(metrics["confusion_matrix"]).shape == (11, 11)


def test_bad_samples_are_reported_and_predictions_kept(camvid, oracle_checkpoint, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(camvid / "images", root / "images", ignore=lambda d, names: names[5:])
    kept = sorted(p.name for p in (root / "images").iterdir())[:3]
    (root / "labels").mkdir()
    for name in kept:
        shutil.copy(camvid / "labels" / name, root / "labels" / name)
    (root / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    small = cv2.imread(str(camvid / "labels" / kept[0]), cv2.IMREAD_UNCHANGED)[:100]
    cv2.imwrite(str(root / "labels" / "small.png"), small)
    lines = [f"images/{kept[0]} labels/{kept[0]}", "images/missing.png labels/missing.png",
             f"images/corrupt.png labels/{kept[1]}", f"images/{kept[1]} labels/small.png",
             f"images/{kept[2]} labels/{kept[2]}"]  # fmt: skip
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "ev"
    code, _, err = run_eval(capsys, "--model", str(oracle_checkpoint), "--dataset", "camvid-11", "--data-root",
                            str(root), "--list", str(root / "list.txt"), "--out", str(out), *FAST)  # fmt: skip
    assert code == 1 and "Traceback" not in err
    assert "list.txt:2" in err and "missing.png: no such file" in err
    assert "list.txt:3" in err and "corrupt.png: not a readable image" in err
    assert "list.txt:4" in err and "is 480x100 but image" in err
    assert sorted(p.name for p in (out / "gray").iterdir()) == sorted(Path(k).stem + ".png" for k in kept[::2])
    assert not (out / "metrics.json").exists()
    (root / "one.txt").write_text(f"images/{kept[0]} labels/{kept[0]}\nimages/{kept[1]}\n")
    code, _, err = run_eval(capsys, "--model", str(oracle_checkpoint), "--dataset", "camvid-11", "--data-root",
                            str(root), "--list", str(root / "one.txt"), "--out", str(tmp_path / "o2"),
                            *FAST)  # fmt: skip
    assert code == 2 and "one.txt:2: no label path" in err


def test_two_process_gloo_run_equals_one_process(camvid, oracle_checkpoint, tmp_path):
    lst = tmp_path / "val5.txt"
    lst.write_text("\n".join((camvid / "val.txt").read_text().split("\n")[:5]) + "\n")
    common = ["eval", "--model", str(oracle_checkpoint), "--dataset", "camvid-11", "--data-root", str(camvid),
              "--list", str(lst), *FAST]  # fmt: skip
    single = run_mseg(1, *common, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, failure(single)
    double = run_mseg(2, *common, "--out", str(tmp_path / "two"))
    assert double.returncode == 0, failure(double)
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert one["confusion_matrix"] == two["confusion_matrix"] and one["mIoU"] == two["mIoU"]
    assert len(list((tmp_path / "two" / "gray").glob("*.png"))) == 5


# ---------------------------------------------------------------------------- mseg results
def write_metrics(folder: Path, model: str, dataset: str, miou: float) -> None:
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"model": model, "dataset": dataset, "mIoU": miou}))


def test_results_table_with_harmonic_mean(tmp_path, capsys):
    write_metrics(tmp_path / "a" / "voc" / "360", "mseg-3m", "voc2012", 70.0)
    write_metrics(tmp_path / "a" / "voc" / "720", "mseg-3m", "voc2012", 72.0)  # max over base sizes
    write_metrics(tmp_path / "a" / "camvid", "mseg-3m", "camvid-11", 80.0)
    write_metrics(tmp_path / "b" / "camvid", "mseg-1m", "camvid-11", 60.0)
    code = main(["results", str(tmp_path), "--out", str(tmp_path / "table")])
    out = capsys.readouterr().out
    assert code == 0
    assert "| model | voc2012 | camvid-11 | h. mean |" in out
    assert "| mseg-3m | 72.0 | 80.0 | 75.8 |" in out  # 2 / (1/72 + 1/80) = 75.79
    assert "| mseg-1m | - | 60.0 | - |" in out
    rows = json.loads((tmp_path / "table.json").read_text())["rows"]
    assert rows[0]["harmonic_mean"] == pytest.approx(2 / (1 / 72 + 1 / 80))
    assert (tmp_path / "table.csv").read_text().splitlines()[0] == "model,voc2012,camvid-11,harmonic_mean"
    assert (tmp_path / "table.md").exists()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "metrics.json").write_text("{}")
    assert main(["results", str(tmp_path / "junk")]) == 2
    assert "not a metrics.json" in capsys.readouterr().err


# ---------------------------------------------------------------------------- relabeled evaluation
def test_relabeled_rules_like_the_original():
    from mseg_semantic.evaluation.plan import apply_relabeled_rules
    from mseg_semantic.taxonomy import class_names as names

    uid = names("universal").index
    person, motorcyclist = uid("person"), uid("motorcyclist")
    gt = np.full((2, 2), person)
    relabeled = np.array([[motorcyclist, motorcyclist], [person, 255]])
    pred, new_gt = apply_relabeled_rules(np.full((2, 2), motorcyclist), gt, relabeled)
    assert pred.tolist() == [[person, person], [motorcyclist, 255]]  # reward: becomes the original class
    assert new_gt.tolist() == [[person, person], [person, 255]]  # relabeled-to-unlabeled pixels are ignored
    pred, _ = apply_relabeled_rules(np.full((2, 2), person), gt, relabeled)
    assert pred.tolist() == [[255, 255], [person, 255]]  # penalty: a miss, but no false positive


def test_relabeled_eval_checks_the_lists_correspond(camvid, tiny_checkpoint, tmp_path, capsys):
    # Two copies of a tiny "cityscapes-19" dataset made from CamVid frames: a plain one and a relabeled one.
    root = tmp_path / "cs"
    (root / "img").mkdir(parents=True)
    (root / "lab").mkdir()
    (root / "rel").mkdir()
    for i, name in enumerate(sorted(p.name for p in (camvid / "images").iterdir())[:2]):
        shutil.copy(camvid / "images" / name, root / "img" / name)
        label = np.full((360, 480), 11, np.uint8)  # cityscapes-19 'person'
        cv2.imwrite(str(root / "lab" / name), label)
        rel = np.full((360, 480), class_names("cityscapes-19-relabeled").index("bicyclist"), np.uint8)
        rel[:10] = 255
        same = np.full((360, 480), class_names("cityscapes-19-relabeled").index("person"), np.uint8)
        cv2.imwrite(str(root / "rel" / name), rel if i == 0 else same)
    names = sorted(p.name for p in (root / "img").iterdir())
    (root / "list.txt").write_text("".join(f"img/{n} lab/{n}\n" for n in names))
    (root / "rel.txt").write_text("".join(f"img/{n} rel/{n}\n" for n in names))
    args = ["--model", str(tiny_checkpoint), "--dataset", "cityscapes-19", "--data-root", str(root), "--list",
            str(root / "list.txt"), *FAST]  # fmt: skip
    code, _, err = run_eval(capsys, *args, "--relabeled", "--out", str(tmp_path / "a"))
    assert code == 2 and "--relabeled-list" in err
    code, _, err = run_eval(capsys, *args, "--relabeled", "--relabeled-list", str(root / "rel.txt"), "--out",
                            str(tmp_path / "b"))  # fmt: skip
    assert code == 0, err
    metrics = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert metrics["regime"] == "universal-on-training-relabeled" and metrics["taxonomy"] == "universal"
    matrix = np.array(metrics["confusion_matrix"])
    # Ignored: the 10 relabeled-to-unlabeled rows of image 0; every other pixel's ground truth is person.
    outside = np.array(metrics["predictions_outside_taxonomy"])  # penalised relabeled pixels
    assert matrix.sum() + outside.sum() == 2 * 360 * 480 - 10 * 480
    person = class_names("universal").index("person")
    assert matrix.sum(axis=1)[person] + outside[person] == matrix.sum() + outside.sum()
    (root / "bad.txt").write_text("".join(f"img/{n} rel/{n}\n" for n in names[::-1]))
    code, _, err = run_eval(capsys, *args, "--relabeled", "--relabeled-list", str(root / "bad.txt"), "--out",
                            str(tmp_path / "c"))  # fmt: skip
    assert code == 2 and "bad.txt:1: names image" in err
