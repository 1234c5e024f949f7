"""``mseg data`` on the real fixtures (ADE20K, COCO panoptic, SUN RGB-D files with the original's outputs), the
shipped records and their check, records that do not fit the data, the COCO JSON stream, verify, status and
kill/restart."""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from mseg_semantic.cli import main
from mseg_semantic.dataprep import convert, records
from mseg_semantic.dataprep.datasets import LOCK_NAME as LOCK
from mseg_semantic.dataprep.run import prepare, relabel
from mseg_semantic.errors import InputError

REPO = Path(__file__).resolve().parents[1]
FIXTURE_DATASETS = ("ade20k", "coco-panoptic", "sunrgbd")


@pytest.fixture(scope="session")
def dataprep(dataprep_data: Path) -> Path:
    return dataprep_data


@pytest.fixture
def root(dataprep: Path, tmp_path: Path) -> Path:
    """A writable copy of the fixture ROOT."""
    target = tmp_path / "root"
    shutil.copytree(dataprep / "root", target)
    return target


def _read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image


def _expected(dataprep: Path, step: str) -> list[Path]:
    return sorted(p.relative_to(dataprep / "expected" / step) for p in (dataprep / "expected" / step).rglob("*.png"))


def _assert_identical(dataprep: Path, step: str, root: Path) -> None:
    files = _expected(dataprep, step)
    assert files
    for rel in files:
        expected, mine = _read(dataprep / "expected" / step / rel), _read(root / rel)
        assert mine.dtype == np.uint8 and mine.ndim == 2, rel
        assert np.array_equal(mine, expected), f"{rel}: {int((mine != expected).sum())} pixels differ"


def _cli(*args: str) -> int:
    return main(["data", *args])


# ---------------------------------------------------------------------- the original's outputs, bit for bit
@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The package as ``pip install .`` installs it (not editable: only its package data), in a folder of its own."""
    target = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
               "--target", str(target), str(REPO)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=target, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (target / "mseg_semantic" / "dataprep" / "records" / "sunrgbd_lamp").is_dir()
    return target


@pytest.mark.slow  # pip installs the package into a folder first
def test_installed_package_reproduces_the_original_outputs_offline(installed, dataprep: Path, root: Path) -> None:
    """prepare + relabel of ade20k, coco-panoptic and sunrgbd through the installed command: the shipped records,
    no --records, no network, two workers; every output equals the original's."""
    env = {**os.environ, "PYTHONPATH": str(installed), "MSEG_HOME": str(root / "no-cache")}
    env.pop("MSEG_DATA", None)

    def mseg(*args: str) -> str:
        command = [sys.executable, "-m", "mseg_semantic", "data", *args, "--root", str(root), "--quiet"]
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=root, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "warning" not in done.stderr
        return done.stdout

    where = subprocess.run([sys.executable, "-c", "import mseg_semantic; print(mseg_semantic.__file__)"],
                           capture_output=True, text=True, env=env, cwd=root, check=True).stdout  # fmt: skip
    assert where.startswith(str(installed)), where
    lists = dataprep / "lists"
    for name in FIXTURE_DATASETS:
        mseg("prepare", name, "--list", str(lists / f"{name}.txt"), "--workers", "2")
    _assert_identical(dataprep, "prepare", root)
    out = "".join(mseg("relabel", name, "--list", str(lists / f"{name}.txt"), "--workers", "2")
                  for name in FIXTURE_DATASETS)  # fmt: skip
    _assert_identical(dataprep, "relabel", root)
    assert "11 segments relabeled" in out  # COCO: 10 val + 1 train
    assert "3 segments relabeled" in out  # SUN RGB-D
    assert "unrelabeled" not in out
    assert not (root / "no-cache").exists()  # nothing downloaded or cached
    # COCO's train lists are written for training to read.
    listed = (root / "COCOPanoptic" / "mseg_lists" / "coco-panoptic-133-relabeled" / "train.txt").read_text()
    assert listed == "images/train2017/000000000009.jpg semantic_relabeled133/train2017/000000000009.png\n"


def test_records_example_relabels_ade20k_non_strictly(dataprep: Path, root: Path) -> None:
    """The ADE20K identity record (building -> building, segment 159) still writes its pixels."""
    lists = dataprep / "lists"
    prepare("ade20k", root, list_file=lists / "ade20k.txt", progress=False)
    [summary] = relabel("ade20k", root, list_file=lists / "ade20k.txt", records=dataprep / "records_example",
                        progress=False)  # fmt: skip
    assert summary.updates == 1
    base = root / "ADE20K" / "ADEChallengeData2016"
    semseg = _read(base / "annotations_semseg150" / "validation" / "ADE_val_00000001.png")
    out = _read(base / "annotations_semseg150_relabeled" / "validation" / "ADE_val_00000001.png")
    seg = cv2.imread(str(root / "ADE20K/ADE20K_2016_07_26/images/validation/a/abbey/ADE_val_00000001_seg.png"))
    blue = cv2.resize(seg[..., 0], (semseg.shape[1], semseg.shape[0]), interpolation=cv2.INTER_NEAREST)
    mask = blue == 159
    from mseg_semantic.taxonomy import get_taxonomy

    building = get_taxonomy("ade20k-150-relabeled").classes.index("building")
    assert mask.sum() > 1000 and (out[mask] == building).all()
    remapped = _read(dataprep / "expected/relabel/ADE20K/ADEChallengeData2016/annotations_semseg150_relabeled"
                     "/validation/ADE_val_00000001.png")  # fmt: skip
    assert np.array_equal(out[~mask], remapped[~mask])
    assert (remapped[mask] != building).any()  # non-strict: the segment's other pixels became building too


def _shipped_copy(folder: Path) -> Path:
    """A records folder that is a copy of the package's (manifest and compressed record files)."""
    shutil.copytree(records.shipped_dir(), folder)
    return folder


def test_a_record_whose_class_the_data_does_not_hold_is_skipped_or_stops_under_strict(
    dataprep: Path, root: Path, tmp_path: Path, capsys
) -> None:
    lists = dataprep / "lists" / "coco-panoptic.txt"
    prepare("coco-panoptic", root, list_file=lists, progress=False)
    mine = _shipped_copy(tmp_path / "records")
    manifest = mine / "records.tsv"
    # The light segment is light_other: a record saying it is a chair does not fit COCO (its swaps check the class).
    manifest.write_text(manifest.read_text().replace("val\tlight_other\tlamp", "val\tchair_other\tlamp"))
    args = ["relabel", "coco-panoptic", "--root", str(root), "--list", str(lists), "--records", str(mine), "--quiet"]
    message = "cocop_val_cocop_light_to_lamp.txt.gz:1: segment 6068135 holds class ids"
    assert _cli(*args, "--strict") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    relabeled = root / "COCOPanoptic" / "semantic_relabeled133"
    assert not relabeled.exists() and not (root / "COCOPanoptic" / ".mseg-relabel-staging").exists()
    assert _cli(*args) == 0
    captured = capsys.readouterr()
    assert f"warning: {mine}/cocop_light/cocop_val_cocop_light_to_lamp.txt.gz:1: segment 6068135" in captured.err
    assert "10 segments relabeled" in captured.out and "1 segments left unrelabeled" in captured.out
    # The segment keeps its class-level label (light_other); the other records of the image are applied.
    out = _read(relabeled / "val2017" / "000000000139.png")
    expected = _read(dataprep / "expected/relabel/COCOPanoptic/semantic_relabeled133/val2017/000000000139.png")
    ids = records.class_ids("coco-panoptic-133")
    differ = out != expected
    assert differ.any() and (out[differ] == ids["light_other"]).all() and (expected[differ] == ids["lamp"]).all()


def test_a_tiny_ade20k_segment_is_skipped_with_a_warning_or_stops_under_strict(
    dataprep: Path, root: Path, tmp_path: Path, capsys
) -> None:
    """A 4-pixel segment (the original quits on fewer than 10): by default the run warns naming the record line,
    applies the other records, reports the skip (summary and status); --strict stops with the same message."""
    lists = dataprep / "lists" / "ade20k.txt"
    prepare("ade20k", root, list_file=lists, progress=False)
    base = root / "ADE20K" / "ADEChallengeData2016"
    height, width = _read(base / "annotations" / "validation" / "ADE_val_00000001.png").shape
    seg_path = root / "ADE20K/ADE20K_2016_07_26/images/validation/a/abbey/ADE_val_00000001_seg.png"
    seg = _read(seg_path)  # BGR: the instance id (B) is channel 0
    tiny = max(set(range(1, 256)) - set(np.unique(seg[..., 0]).tolist()))
    for row in (100, 101):
        for col in (200, 201):
            seg[row * seg.shape[0] // height, col * seg.shape[1] // width, 0] = tiny
    cv2.imwrite(str(seg_path), seg)
    resized = cv2.resize(np.ascontiguousarray(seg[..., 0]), (width, height), interpolation=cv2.INTER_NEAREST)
    assert int((resized == tiny).sum()) == 4
    mine = tmp_path / "records"
    (mine / "ade").mkdir(parents=True)
    (mine / "records.tsv").write_text(
        "dataset\tsplit\tfrom\tto\tfile\nade20k-150\tval\tbuilding\tbuilding\tade/val.txt\n"
    )
    (mine / "ade" / "val.txt").write_text(f"ADE_val_00000001_159.png\nADE_val_00000001_{tiny}.png\n")
    args = ["relabel", "ade20k", "--root", str(root), "--list", str(lists), "--records", str(mine), "--quiet"]
    message = f"{mine / 'ade' / 'val.txt'}:2: segment {tiny} has 4 pixels, fewer than 10"
    assert _cli(*args, "--strict") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (base / "annotations_semseg150_relabeled").exists()
    assert _cli(*args) == 0
    captured = capsys.readouterr()
    assert f"warning: {message} (left unrelabeled)" in captured.err
    assert "1 segments relabeled" in captured.out and "1 segments left unrelabeled" in captured.out
    out = _read(base / "annotations_semseg150_relabeled" / "validation" / "ADE_val_00000001.png")
    building = records.class_ids("ade20k-150")["building"]
    assert (out[resized == 159] == building).all()  # the other record was applied
    expected = _read(dataprep / "expected/relabel/ADE20K/ADEChallengeData2016/annotations_semseg150_relabeled"
                     "/validation/ADE_val_00000001.png")  # fmt: skip
    assert np.array_equal(out[resized == tiny], expected[resized == tiny])  # the tiny one: the class-level remap
    assert (base / "annotations_semseg150_relabeled" / "training" / "ADE_train_00000001.png").is_file()
    assert _cli("status", "--root", str(root), "--json") == 0
    rows = {r["dataset"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["ade20k"]["unrelabeled"] == 1 and rows["sunrgbd"]["unrelabeled"] == 0
    assert _cli("status", "--root", str(root)) == 0
    assert "unrelabeled" in capsys.readouterr().out
    # A rerun keeps the files it does not rewrite, and their count; --overwrite with --strict still refuses.
    assert _cli(*args) == 0 and "left unrelabeled" not in capsys.readouterr().out
    assert _cli("status", "--root", str(root), "--json") == 0
    assert {r["dataset"]: r for r in json.loads(capsys.readouterr().out)}["ade20k"]["unrelabeled"] == 1


def test_a_segment_missing_from_the_data_is_skipped_or_stops_under_strict(dataprep: Path, root: Path, tmp_path):
    lists = dataprep / "lists" / "sunrgbd.txt"
    prepare("sunrgbd", root, list_file=lists, progress=False)
    mine = tmp_path / "records"
    mine.mkdir()
    (mine / "records.tsv").write_text("dataset\tsplit\tfrom\tto\tfile\nsunrgbd-37\ttrain\tlight_other\tlamp\ta.txt\n")
    (mine / "a.txt").write_text("img-000001_34.jpg\nimg-000001_30.jpg\n")
    with pytest.raises(InputError, match=r"a.txt:2: image has no segment 30"):
        relabel("sunrgbd", root, records=mine, list_file=lists, strict=True, progress=False)
    assert not (root / "SUNRGBD" / "semseg-relabeled37").exists()
    [summary] = relabel("sunrgbd", root, records=mine, list_file=lists, progress=False)
    assert summary.updates == 1 and summary.unrelabeled == [f"{mine / 'a.txt'}:2: image has no segment 30"]


def test_rerun_keeps_outputs_and_overwrite_rewrites(dataprep: Path, root: Path) -> None:
    lists = dataprep / "lists" / "sunrgbd.txt"
    prepare("sunrgbd", root, list_file=lists, progress=False)
    relabel("sunrgbd", root, list_file=lists, progress=False)
    outputs = sorted((root / "SUNRGBD").rglob("semseg-*/*/*.png"))
    assert len(outputs) == 4
    old = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in outputs}
    time.sleep(0.02)
    assert sum(prepare("sunrgbd", root, list_file=lists, progress=False).written.values()) == 0
    [summary] = relabel("sunrgbd", root, list_file=lists, progress=False)
    assert sum(summary.written.values()) == 0
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in outputs} == old
    relabel("sunrgbd", root, list_file=lists, overwrite=True, progress=False)
    assert all(p.stat().st_mtime_ns != old[p][0] and p.read_bytes() == old[p][1] for p in outputs if "relab" in str(p))


# ---------------------------------------------------------------------- verify and status
def _add_coco_images(root: Path) -> None:
    """The fixtures lack COCO's RGB images (the preparation never reads them); verify needs them."""
    for split in ("train", "val"):
        data = json.loads((root / "COCOPanoptic" / "annotations" / f"panoptic_{split}2017.json").read_text())
        for image in data["images"]:
            path = root / "COCOPanoptic" / "images" / f"{split}2017" / image["file_name"]
            path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(path), np.zeros((image["height"], image["width"], 3), np.uint8))


def test_verify_passes_on_the_prepared_fixtures_and_names_a_damaged_label(dataprep: Path, root: Path, capsys):
    _add_coco_images(root)
    lists = dataprep / "lists"
    for name in FIXTURE_DATASETS:
        prepare(name, root, list_file=lists / f"{name}.txt", progress=False)
        relabel(name, root, list_file=lists / f"{name}.txt", progress=False)
        assert _cli("verify", name, "--root", str(root), "--list", str(lists / f"{name}.txt"), "--quiet") == 0
    assert "ade20k: verified" in capsys.readouterr().out
    # One damaged label: values that are not ADE20K classes.
    damaged = root / "ADE20K/ADEChallengeData2016/annotations_semseg150_relabeled/validation/ADE_val_00000001.png"
    label = _read(damaged)
    label[:4, :4] = 200
    cv2.imwrite(str(damaged), label)
    assert _cli("verify", "ade20k", "--root", str(root), "--list", str(lists / "ade20k.txt"), "--quiet") == 1
    out = capsys.readouterr().out
    assert f"label {damaged} holds values [200]" in out
    # A truncated label file is named too.
    damaged.write_bytes(damaged.read_bytes()[:100])
    assert _cli("verify", "ade20k", "--root", str(root), "--list", str(lists / "ade20k.txt"), "--json") == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["passed"] and str(damaged) in report["problems"][0]


def test_status_counts_what_is_there(dataprep: Path, root: Path, capsys) -> None:
    prepare("sunrgbd", root, list_file=dataprep / "lists" / "sunrgbd.txt", progress=False)
    assert _cli("status", "--root", str(root), "--json") == 0
    rows = {r["dataset"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["sunrgbd"]["prepared"] == [2, 5760] and rows["sunrgbd"]["relabeled"] == [0, 5760]
    assert rows["sunrgbd"]["raw"] == [2, 5760] and not rows["cityscapes"]["present"]
    assert len(rows) == 13
    assert _cli("status", "--root", str(root)) == 0
    assert "sunrgbd" in capsys.readouterr().out


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prepare", "nope"], "unknown dataset 'nope'"),
        (["prepare", "ade20k", "--root", "/does/not/exist"], "data root does not exist"),
        (["prepare", "ade20k", "--root", __file__], "data root is a file, not a folder"),
        (["prepare", "ade20k"], "give the data root with --root ROOT"),
        (["relabel", "camvid", "--root", "."], "camvid is a test dataset"),
        (["prepare", "ade20k", "--root", ".", "--workers", "0"], "--workers must be at least 1"),
    ],
)
def test_bad_arguments_get_one_line(args, message, capsys, monkeypatch) -> None:
    monkeypatch.delenv("MSEG_DATA", raising=False)
    assert _cli(*args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


def test_list_lines_must_name_images_of_the_dataset(dataprep: Path, root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "list.txt"
    bad.write_text("image/train/img-000001.jpg\nimage/train/not-an-image.jpg label\n")
    with pytest.raises(InputError, match=rf"{bad}:2: image/train/not-an-image.jpg is not an image"):
        prepare("sunrgbd", root, list_file=bad, progress=False)


def test_a_missing_or_corrupt_raw_file_is_named(dataprep: Path, root: Path) -> None:
    raw = root / "SUNRGBD" / "label38" / "train" / "00000001.png"
    raw.write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"image/train/img-000001.jpg: .*00000001.png: not a readable image"):
        prepare("sunrgbd", root, list_file=dataprep / "lists" / "sunrgbd.txt", progress=False)
    assert not list((root / "SUNRGBD" / "semseg-label37" / "train").glob("*"))  # nothing half-written
    raw.unlink()
    with pytest.raises(InputError, match=r"00000001.png: raw file missing"):
        prepare("sunrgbd", root, list_file=dataprep / "lists" / "sunrgbd.txt", progress=False)


# ---------------------------------------------------------------------- records: manifest, grammar
def test_shipped_records_are_every_original_record_whole() -> None:
    manifest = records.shipped_dir() / "records.tsv"
    rows = list(csv.reader(manifest.read_text().splitlines(), delimiter="\t"))
    assert rows[0] == ["dataset", "split", "from", "to", "file", "lines", "sha256"]
    body = rows[1:]
    assert len(body) == 381 + 12  # the Cityscapes records apply to 19 and 34 classes
    assert sum(int(r[5]) for r in body) == 228_776
    assert len({r[4] for r in body}) == 381
    assert body[0][:6] == ["ade20k-150", "train", "fence", "fence", "ade20k_fence_guardrail/ade20k_fence_train.txt",
                           "997"]  # fmt: skip
    for dataset, _, orig, new, *_ in body:  # every class is a class of the relabeled taxonomy
        ids = records.class_ids(dataset)
        assert orig in ids and new in ids
    assert records.resolve(None) == (manifest, records.shipped_dir())
    assert records.check_records(manifest, records.shipped_dir()) == []  # every file there, counts and hashes equal
    shipped = {p.relative_to(records.shipped_dir()).as_posix() for p in records.shipped_dir().rglob("*.gz")}
    assert shipped == {f"{r[4]}.gz" for r in body}


def _manifest_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "build_records_manifest.py"), *args],
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_a_tampered_record_fails_the_check_and_the_relabel(root: Path, dataprep: Path, tmp_path: Path) -> None:
    """One line changed in one shipped file (same line count): CI's check and relabel both name the file."""
    assert _manifest_tool("--check").returncode == 0
    mine = _shipped_copy(tmp_path / "records")
    tampered = mine / "sunrgbd_lamp" / "sunrgbd_train_sunrgbd_lamp_to_lamp.txt.gz"
    lines = gzip.decompress(tampered.read_bytes()).decode().splitlines()
    lines[5] = lines[5].replace("_34.", "_35.")
    tampered.write_bytes(gzip.compress("\n".join(lines).encode()))
    done = _manifest_tool("--check", "--records", str(mine))
    assert done.returncode == 1 and f"{tampered}: content differs" in done.stdout, done.stdout + done.stderr
    assert done.stdout.count("content differs") == 1
    prepare("sunrgbd", root, list_file=dataprep / "lists" / "sunrgbd.txt", progress=False)
    with pytest.raises(InputError, match=rf"{tampered}: content differs .*sha256 mismatch"):
        relabel("sunrgbd", root, list_file=dataprep / "lists" / "sunrgbd.txt", records=mine, progress=False)
    assert not (root / "SUNRGBD" / "semseg-relabeled37").exists()


@pytest.mark.parametrize(
    ("task", "line", "split", "expected"),
    [
        ("ade20k-150", "ADE_val_00000318_248.png", "val", ("validation", "ADE_val_00000318", 248)),
        ("ade20k-150", "ADE_train_00016125_113.png", "train", ("training", "ADE_train_00016125", 113)),
        ("coco-panoptic-133", "000000024880_7237508.png", "train", ("train2017", "000000024880", 7237508)),
        ("bdd", "0f4e8f1e-6ba53d52_11.jpg", "train", ("train", "0f4e8f1e-6ba53d52", 11)),
        ("cityscapes-19", "seqfrankfurt_frankfurt_000000_013942_leftImg8bit_28.jpg", "val",
         ("frankfurt", "frankfurt_000000_013942_leftImg8bit", 28)),
        ("cityscapes-34", "seqfrankfurt_frankfurt_000000_013942_leftImg8bit_28.jpg", "val",
         ("frankfurt", "frankfurt_000000_013942_leftImg8bit", 28)),
        ("idd-39", "seq173_316862_leftImg8bit_34.jpg", "train", ("173", "316862_leftImg8bit", 34)),
        ("sunrgbd-37", "img-002177_11.jpg", "val", ("test", "img-002177", 11)),
        ("mapillary-public65", "mapillary_czkO_9In4u30opBy5H1uLg_259.jpg", "train",
         ("labels", "czkO_9In4u30opBy5H1uLg", 259)),
    ],
)  # fmt: skip
def test_record_lines_name_segments_as_the_original(task, line, split, expected) -> None:
    assert records.parse_line(task, line, split) == expected


@pytest.mark.parametrize("line", ["ADE_val_00000318_x.png", "nounderscore.png", "ADE_val_00000318_-3.png"])
def test_unparseable_record_lines_are_refused(line) -> None:
    with pytest.raises(ValueError):
        records.parse_line("ade20k-150", line, "val")


def test_record_errors_name_file_and_line(root: Path, dataprep: Path, tmp_path: Path) -> None:
    lists = dataprep / "lists" / "sunrgbd.txt"
    prepare("sunrgbd", root, list_file=lists, progress=False)

    def folder(rows: list[str], files: dict[str, str], header: str = "dataset\tsplit\tfrom\tto\tfile") -> Path:
        path = tmp_path / f"records{len(list(tmp_path.glob('records*')))}"
        path.mkdir()
        (path / "records.tsv").write_text(header + "\n" + "".join(r + "\n" for r in rows))
        for name, text in files.items():
            (path / name).write_text(text)
        return path

    cases = [
        (folder(["sunrgbd-37\ttrain\tlight_other\tlamp\ta.txt"], {"a.txt": "img-000001_34.jpg\nimg-000001.jpg\n"}),
         r"a.txt:2: cannot parse record line 'img-000001.jpg'"),
        (folder(["sunrgbd-37\ttrain\tlight_other\tlamp\ta.txt", "sunrgbd-37\ttrain\tlight_other\tlamp\tb.txt"],
                {"a.txt": "img-000001_34.jpg\n", "b.txt": "img-000001_34.jpg\n"}),
         r"b.txt:1: segment 34 of 'img-000001' is already relabeled by .*a.txt:1"),
        (folder(["sunrgbd-37\ttrain\tlight_other\tlamp\tmissing.txt"], {}),
         r"records.tsv:2: record file .*missing.txt does not exist"),
        (folder(["sunrgbd-37\ttrain\tlight_other\tlampshade\ta.txt"], {"a.txt": ""}),
         r"records.tsv:2: to class 'lampshade' is not a class of sunrgbd-37-relabeled"),
        (folder([], {}, header="dataset\tfile"), r"records.tsv:1: header must be"),
        (folder(["sunrgbd-37\ttrain\tlight_other\tlamp\ta.txt"], {"a.txt": "img-999999_34.jpg\n"}),
         r"a.txt:1: record names image 'img-999999' \(train\), which is not in the train list"),
    ]  # fmt: skip
    for records_dir, message in cases:
        with pytest.raises(InputError, match=message):
            relabel("sunrgbd", root, records=records_dir, list_file=None if "999999" in message else lists,
                    progress=False)  # fmt: skip
        assert not (root / "SUNRGBD" / "semseg-relabeled37").exists()


def test_a_copy_of_mseg_apis_relabeled_data_uses_the_shipped_manifest(root: Path, dataprep: Path, tmp_path) -> None:
    """--records naming mseg-api's own folder (plain text files, no records.tsv): checked against our manifest."""
    lists = dataprep / "lists" / "sunrgbd.txt"
    prepare("sunrgbd", root, list_file=lists, progress=False)
    folder = tmp_path / "relabeled_data"
    for path in records.shipped_dir().glob("sunrgbd_*/*.gz"):
        target = folder / path.parent.name / path.stem
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(gzip.decompress(path.read_bytes()))
    relabel("sunrgbd", root, list_file=lists, records=folder, progress=False)
    for rel in _expected(dataprep, "relabel"):
        if rel.parts[0] == "SUNRGBD":
            assert np.array_equal(_read(root / rel), _read(dataprep / "expected" / "relabel" / rel)), rel


# ---------------------------------------------------------------------- the COCO JSON stream
def test_panoptic_index_streams_the_json(dataprep: Path, monkeypatch, tmp_path: Path) -> None:
    source = dataprep / "root" / "COCOPanoptic" / "annotations" / "panoptic_val2017.json"
    data = json.loads(source.read_text())
    # Several annotations, keys in another order, whitespace: read in 5-byte chunks.
    data["annotations"] = [*data["annotations"], {**data["annotations"][0], "file_name": "000000000001.png"}]
    path = tmp_path / "panoptic.json"
    path.write_text(json.dumps({"info": {"x": 1}, "annotations": data["annotations"], "categories": data["categories"]},
                               indent=2))  # fmt: skip
    monkeypatch.setattr(convert, "_CHUNK", 5)
    index = convert.panoptic_index(path)
    assert list(index) == ["000000000139", "000000000001"]
    infos = data["annotations"][0]["segments_info"]
    assert index["000000000139"][0].tolist() == [s["id"] for s in infos]
    assert index["000000000139"][1].tolist() == [s["category_id"] for s in infos]
    path.write_text('{"annotations": [{"file_name": "a.png"}]}')
    with pytest.raises(InputError, match="annotation 1 is malformed"):
        convert.panoptic_index(path)
    path.write_text('{"annotations": [{"file_name": "a.png", "segments_info": []}')
    with pytest.raises(InputError, match=r"unexpected end of file|malformed JSON"):
        convert.panoptic_index(path)


# ---------------------------------------------------------------------- killed and restarted
def _kitti_root(path: Path, count: int) -> Path:
    from mseg_semantic.data.lists import list_lines

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for fields in list_lines("kitti-34", split)[1][:count]:
            label = rng.integers(0, 34, size=(375, 1242), dtype=np.uint8)
            target = path / "KITTI" / fields[1]
            target.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(target), label)
    return path


def test_a_killed_run_restarted_ends_like_an_uninterrupted_run(tmp_path: Path) -> None:
    killed, clean = _kitti_root(tmp_path / "killed", 200), tmp_path / "clean"
    shutil.copytree(killed, clean)
    prepare("kitti", clean, progress=False)
    out_dir = killed / "KITTI" / "training" / "label19"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "mseg_semantic", "data", "prepare", "kitti", "--root", str(killed), "--workers", "1",
           "--quiet"]  # fmt: skip
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out_dir.glob("*.png"))) < 20:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(list(out_dir.glob("*.png")))
    assert 20 <= done < 200, done  # killed midway
    assert _cli("prepare", "kitti", "--root", str(killed), "--quiet") == 0
    mine = sorted(p.relative_to(killed) for p in (killed / "KITTI").rglob("*") if p.is_file() and p.name != LOCK)
    theirs = sorted(p.relative_to(clean) for p in (clean / "KITTI").rglob("*") if p.is_file() and p.name != LOCK)
    assert mine == theirs  # no leftover temporary files either
    assert all((killed / p).read_bytes() == (clean / p).read_bytes() for p in mine)


def _sun_root(path: Path, count: int) -> Path:
    """A SUN RGB-D root with random raw labels for the first ``count`` train images; returns its --list file."""
    from mseg_semantic.data.lists import list_lines

    rng = np.random.default_rng(1)
    images = []
    for fields in list_lines("sunrgbd-38", "train")[1][:count]:
        target = path / "SUNRGBD" / fields[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), rng.integers(0, 38, size=(53, 73), dtype=np.uint8))
        images.append(fields[0])
    listing = path / "list.txt"
    listing.write_text("".join(f"{image}\n" for image in images))
    return listing


def _holds_lock(lock: Path, pid: int) -> bool:
    try:
        return json.loads(lock.read_text() or "{}").get("pid") == pid
    except (OSError, ValueError):
        return False


def test_a_second_run_on_one_dataset_is_refused_and_the_first_ends_as_a_single_run(tmp_path: Path) -> None:
    """prepare, then relabel: run A is frozen (SIGSTOP) while it holds the lock; run B, the same command, is refused
    with A named and touches nothing; A then finishes, and every file equals one uninterrupted run's."""
    listing = _sun_root(tmp_path / "busy", 60)
    busy, single = tmp_path / "busy", tmp_path / "single"
    shutil.copytree(busy, single)
    prepare("sunrgbd", single, list_file=listing, progress=False)
    relabel("sunrgbd", single, list_file=listing, progress=False)
    lock = busy / "SUNRGBD" / LOCK
    for step in ("prepare", "relabel"):
        command = [sys.executable, "-m", "mseg_semantic", "data", step, "sunrgbd", "--root", str(busy), "--list",
                   str(listing), "--workers", "1", "--quiet"]  # fmt: skip
        first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while not _holds_lock(lock, first.pid) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        first.send_signal(signal.SIGSTOP)
        try:
            assert _holds_lock(lock, first.pid), f"{step}: the first run never held the lock"
            second = subprocess.run(command, capture_output=True, text=True, timeout=300)
        finally:
            first.send_signal(signal.SIGCONT)
        assert second.returncode == 2, second.stderr
        assert f"another 'mseg data {step} sunrgbd' (pid {first.pid}, started " in second.stderr
        assert "Traceback" not in second.stderr and second.stderr.count("\n") == 1
        assert first.wait(timeout=300) == 0
    mine = sorted(p.relative_to(busy) for p in (busy / "SUNRGBD").rglob("*") if p.is_file() and p.name != LOCK)
    theirs = sorted(p.relative_to(single) for p in (single / "SUNRGBD").rglob("*") if p.is_file() and p.name != LOCK)
    assert mine == theirs and len(mine) == 3 * 60  # raw, prepared, relabeled; no temporary or staged file
    assert all((busy / p).read_bytes() == (single / p).read_bytes() for p in mine)


def test_a_record_file_named_twice_for_one_dataset_is_refused(dataprep: Path, root: Path, tmp_path: Path) -> None:
    """A manifest row copied and its `to` edited must not apply the file's segments twice (the last silently won)."""
    lists = dataprep / "lists" / "ade20k.txt"
    prepare("ade20k", root, list_file=lists, progress=False)
    mine = tmp_path / "records"
    (mine / "ade").mkdir(parents=True)
    (mine / "ade" / "val.txt").write_text("ADE_val_00000001_159.png\n")
    header = "dataset\tsplit\tfrom\tto\tfile\n"
    rows = "ade20k-150\tval\tbuilding\tbuilding\tade/val.txt\nade20k-150\tval\tbuilding\tsky\tade/val.txt\n"
    (mine / "records.tsv").write_text(header + rows)
    with pytest.raises(InputError, match=r"records.tsv:3: names record file ade/val.txt for ade20k-150 again "
                                         r"\(first at .*records.tsv:2\)"):  # fmt: skip
        relabel("ade20k", root, list_file=lists, records=mine, progress=False)
    assert not (root / "ADE20K" / "ADEChallengeData2016" / "annotations_semseg150_relabeled").exists()


def test_workers_beyond_the_cpus_are_lowered_with_a_note(dataprep: Path, root: Path, capsys) -> None:
    from mseg_semantic.locks import usable_cpus

    lists = dataprep / "lists" / "sunrgbd.txt"
    assert _cli("prepare", "sunrgbd", "--root", str(root), "--list", str(lists), "--workers", "100000", "--quiet") == 0
    captured = capsys.readouterr()
    assert f"note: --workers 100000 lowered to {usable_cpus()}, the CPUs this process may use" in captured.err
    assert "2 files written" not in captured.out and "1 files written" in captured.out


def test_verify_decodes_images_whole_and_checks_a_root_it_cannot_write(dataprep: Path, root: Path, capsys) -> None:
    lists = dataprep / "lists" / "sunrgbd.txt"
    prepare("sunrgbd", root, list_file=lists, progress=False)
    relabel("sunrgbd", root, list_file=lists, progress=False)
    image = root / "SUNRGBD" / "image" / "train" / "img-000001.jpg"
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 3])  # truncated: the header still reads
    # The "last verified" marker cannot be written (here: a folder stands where the file would go).
    (root / "SUNRGBD" / ".mseg_verified.json").mkdir()
    assert _cli("verify", "sunrgbd", "--root", str(root), "--workers", "1", "--quiet", "--list", str(lists)) == 1
    captured = capsys.readouterr()
    assert f"image {image}: not a readable image (corrupt, truncated" in captured.out
    assert "Traceback" not in captured.err
    # Through the command: the decoders' own warnings about the damaged file stay off stderr.
    label = root / "SUNRGBD" / "semseg-label37" / "test" / "00000001.png"
    label.write_bytes(label.read_bytes()[:8] + b"x" * 40)  # a PNG signature, then garbage
    command = [sys.executable, "-m", "mseg_semantic", "data", "verify", "sunrgbd", "--root", str(root), "--workers",
               "1", "--quiet", "--list", str(lists)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 1 and f"label {label}: not a readable image file" in done.stdout
    assert done.stderr == "", done.stderr


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm, a second file system")
def test_relabel_into_a_folder_on_another_file_system(dataprep: Path, root: Path) -> None:
    """The relabeled folder a symlink to another disk: staged files sit beside their labels, so moving is a rename."""
    import tempfile

    lists = dataprep / "lists" / "sunrgbd.txt"
    prepare("sunrgbd", root, list_file=lists, progress=False)
    with tempfile.TemporaryDirectory(dir="/dev/shm") as elsewhere:
        if os.stat(elsewhere).st_dev == os.stat(root).st_dev:
            pytest.skip("/dev/shm is on the same file system here")
        (root / "SUNRGBD" / "semseg-relabeled37").symlink_to(elsewhere, target_is_directory=True)
        relabel("sunrgbd", root, list_file=lists, workers=2, progress=False)
        names = sorted(p.relative_to(elsewhere).as_posix() for p in Path(elsewhere).rglob("*") if p.is_file())
        assert names == ["test/00000001.png", "train/00000001.png"]  # nothing staged left behind
        for rel in _expected(dataprep, "relabel"):
            if rel.parts[0] == "SUNRGBD":
                assert np.array_equal(_read(root / rel), _read(dataprep / "expected" / "relabel" / rel)), rel


def test_an_os_error_is_one_line_naming_the_path(dataprep: Path, root: Path, capsys) -> None:
    """OSErrors (full disk, read-only, permission) are the user's to fix: one line, the path, what to do."""
    import errno

    from mseg_semantic.errors import describe_os_error

    (root / "SUNRGBD" / LOCK).mkdir()  # the lock file cannot be opened: a real IsADirectoryError
    lists = dataprep / "lists" / "sunrgbd.txt"
    assert _cli("prepare", "sunrgbd", "--root", str(root), "--list", str(lists), "--quiet") == 2
    err = capsys.readouterr().err
    assert err == f"mseg data: error: {root / 'SUNRGBD' / LOCK}: Is a directory\n"
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/out/a.png")
    assert describe_os_error(full).startswith("/out/a.png: No space left on device (the disk is full: free some")
    assert "choose a folder you can write to" in describe_os_error(OSError(errno.EROFS, "Read-only file system", "/x"))


def test_prepare_extracts_a_gated_archive_placed_by_hand(tmp_path: Path, capsys) -> None:
    """KITTI's data_semantics.zip dropped into ROOT/KITTI/ is unpacked, then converted (kitti-34 -> kitti-19)."""
    import zipfile

    from mseg_semantic.data.lists import list_lines
    from mseg_semantic.taxonomy import TaxonomyConverter

    first = list_lines("kitti-34", "train")[1][0]  # [image, label]
    label = np.arange(34, dtype=np.uint8).repeat(3).reshape(6, 17)
    png = cv2.imencode(".png", label)[1]
    (tmp_path / "KITTI").mkdir()
    with zipfile.ZipFile(tmp_path / "KITTI" / "data_semantics.zip", "w") as archive:
        archive.writestr(first[1], png.tobytes())
        image = cv2.imencode(".png", np.zeros((6, 17, 3), np.uint8))[1].tobytes()
        archive.writestr(first[0], image)
        archive.writestr("testing/image_2/000000_10.png", image)  # the real archive has both folders
    listing = tmp_path / "list.txt"
    listing.write_text(first[0] + "\n")
    assert _cli("prepare", "kitti", "--root", str(tmp_path), "--list", str(listing), "--quiet") == 0
    out = _read(tmp_path / "KITTI" / "training" / "label19" / Path(first[1]).name)
    assert np.array_equal(out, TaxonomyConverter().convert_labels(label, "kitti-34", "kitti-19"))
    assert "kitti train: 1 images, 1 files written" in capsys.readouterr().out
    assert _cli("verify", "kitti", "--root", str(tmp_path), "--list", str(listing), "--quiet") == 0


def test_the_python_api_is_the_commands_own() -> None:
    import mseg_semantic.dataprep as dataprep
    from mseg_semantic.dataprep import run, verification

    # Also after the modules are imported: no submodule shadows a function of the same name.
    assert dataprep.prepare is run.prepare and dataprep.relabel is run.relabel
    assert dataprep.verify is verification.verify and dataprep.status is verification.status
    with pytest.raises(AttributeError, match="no attribute 'prepar'"):
        dataprep.prepar  # noqa: B018
