"""Dataset download and extraction against a local HTTP mirror on 127.0.0.1 serving tiny archives built here.

Each archive has the member layout of the real release (a few bytes per file), so the tests check the layout
`mseg data prepare` will find: renames (SUN RGB-D label37 -> label38), dropped parts (depth/, VOCdevkit/),
nested zips (COCO), resume with HTTP Range, verification, and refusal of unsafe or damaged archives.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
from mirror_server import serve

from mseg_semantic.dataprep.datasets import LOCK_NAME
from mseg_semantic.dataprep.download import (
    ARCHIVES,
    MANUAL_ARCHIVES,
    REGISTRATION,
    download_dataset,
    extract_archives,
    manual_instructions,
)
from mseg_semantic.downloads import http_download
from mseg_semantic.errors import DownloadError, InputError


@pytest.fixture
def mirror(tmp_path):
    """(folder the server serves, its URL, the handler class with the recorded requests)."""
    with serve(tmp_path / "mirror") as handler:
        yield handler.root, handler.url, handler


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def make_tar(path: Path, members: dict[str, bytes], *, links: dict[str, str] | None = None) -> Path:
    mode = "w:gz" if path.name.endswith((".gz", ".tgz")) else "w"
    with tarfile.open(path, mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    return path


def files_under(folder: Path) -> set[str]:
    """The files below ``folder`` but the lock file a writing step keeps there."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != LOCK_NAME}


# The members of each public archive, as the real release lays them out (names from the original lists/scripts).
RELEASES: dict[str, dict[str, dict[str, bytes]]] = {
    "ade20k": {
        "ADE20K_2016_07_26.zip": {
            "ADE20K_2016_07_26/images/training/a/aiport_terminal/ADE_train_00000001_seg.png": b"seg",
            "ADE20K_2016_07_26/index_ade20k.mat": b"mat"},
        "ADEChallengeData2016.zip": {
            "ADEChallengeData2016/images/training/ADE_train_00000001.jpg": b"jpg",
            "ADEChallengeData2016/annotations/validation/ADE_val_00000001.png": b"png"},
    },
    "coco-panoptic": {
        "panoptic_annotations_trainval2017.zip": {
            "annotations/panoptic_train2017.json": b"{}", "annotations/panoptic_val2017.json": b"{}",
            "annotations/panoptic_train2017.zip": zip_bytes({"panoptic_train2017/000000000009.png": b"p9"}),
            "annotations/panoptic_val2017.zip": zip_bytes({"panoptic_val2017/000000000139.png": b"p139"})},
        "train2017.zip": {"train2017/000000000009.jpg": b"i9"},
        "val2017.zip": {"val2017/000000000139.jpg": b"i139"},
    },
    "camvid": {
        "701_StillsRaw_full.zip": {"701_StillsRaw_full/0001TP_006690.png": b"img"},
        "LabeledApproved_full.zip": {"0001TP_006690_L.png": b"lbl", "Seq05VD_f00000_L.png": b"lbl2"},
    },
    "voc2012": {
        "VOCtrainval_11-May-2012.tar": {
            "VOCdevkit/VOC2012/JPEGImages/2007_000032.jpg": b"jpg",
            "VOCdevkit/VOC2012/SegmentationClass/2007_000032.png": b"png"},
        "SegmentationClassAug.zip": {
            "SegmentationClassAug/2007_000032.png": b"aug", "__MACOSX/SegmentationClassAug/._2007_000032.png": b"x"},
    },
    "pascal-context": {
        "VOCtrainval_03-May-2010.tar": {
            "VOCdevkit/VOC2010/JPEGImages/2008_000002.jpg": b"jpg",
            "VOCdevkit/VOC2010/Annotations/2008_000002.xml": b"xml"},
        "trainval.tar.gz": {"trainval/2008_000002.mat": b"mat"},
    },
    "sunrgbd": {
        "sun_rgbd.tgz": {
            "image/train/img-000001.jpg": b"tr", "image/test/img-000001.jpg": b"te",
            "label37/train/00000001.png": b"l1", "label37/test/00000001.png": b"l2",
            "depth/train/00000001.png": b"d1"},
    },
}  # fmt: skip

LAYOUTS: dict[str, tuple[str, set[str]]] = {
    "ade20k": ("ADE20K", {
        "ADE20K_2016_07_26/images/training/a/aiport_terminal/ADE_train_00000001_seg.png",
        "ADE20K_2016_07_26/index_ade20k.mat",
        "ADEChallengeData2016/images/training/ADE_train_00000001.jpg",
        "ADEChallengeData2016/annotations/validation/ADE_val_00000001.png"}),
    "coco-panoptic": ("COCOPanoptic", {
        "annotations/panoptic_train2017.json", "annotations/panoptic_val2017.json",
        "annotations/panoptic_train2017/000000000009.png", "annotations/panoptic_val2017/000000000139.png",
        "images/train2017/000000000009.jpg", "images/val2017/000000000139.jpg"}),
    "camvid": ("Camvid", {
        "701_StillsRaw_full/0001TP_006690.png", "Labels32-RGB/0001TP_006690_L.png",
        "Labels32-RGB/Seq05VD_f00000_L.png"}),
    "voc2012": ("PASCAL_VOC_2012", {"JPEGImages/2007_000032.jpg", "SegmentationClassAug/2007_000032.png"}),
    "pascal-context": ("PASCAL_Context", {"JPEGImages/2008_000002.jpg", "trainval/2008_000002.mat"}),
    "sunrgbd": ("SUNRGBD", {
        "image/train/img-000001.jpg", "image/test/img-000001.jpg",
        "label38/train/00000001.png", "label38/test/00000001.png"}),
}  # fmt: skip


def build_release(dataset: str, folder: Path) -> dict[str, Path]:
    """Write the tiny archives of ``dataset`` into ``folder``; returns name -> path."""
    paths = {}
    for name, members in RELEASES[dataset].items():
        make = make_zip if name.endswith(".zip") else make_tar
        paths[name] = make(folder / name, members)
    return paths


def unverified(dataset: str) -> tuple:
    """The real archive table entries without published size/checksums (the tiny test archives differ)."""
    return tuple(dataclasses.replace(a, size=None, md5=None, sha256=None) for a in ARCHIVES[dataset])


def test_the_tables_cover_every_dataset():
    from mseg_semantic.dataprep.datasets import DATASETS

    assert set(ARCHIVES) | set(MANUAL_ARCHIVES) == set(DATASETS)
    assert set(MANUAL_ARCHIVES) == set(REGISTRATION)
    assert not set(ARCHIVES) & set(MANUAL_ARCHIVES)
    assert set(RELEASES) == set(ARCHIVES)
    for archives in ARCHIVES.values():
        for archive in archives:
            assert archive.url.split("?")[0].endswith(archive.name)
            assert archive.md5 is None or len(archive.md5) == 32
            assert archive.sha256 is None or len(archive.sha256) == 64


@pytest.mark.parametrize("dataset", list(RELEASES))
def test_download_gives_the_original_layout(dataset, mirror, tmp_path, monkeypatch):
    served, url, handler = mirror
    build_release(dataset, served)
    monkeypatch.setitem(ARCHIVES, dataset, unverified(dataset))
    root = tmp_path / "root"
    placed = download_dataset(dataset, root, mirror=url, progress=False)
    top, expected = LAYOUTS[dataset]
    folder = root / top
    assert files_under(folder) == expected  # archives deleted, dropped parts gone, no .part, no staging folder
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == [LOCK_NAME]  # no hidden leftovers
    assert placed and all(p.exists() and p.is_relative_to(folder) for p in placed)
    # A second run finds the layout and neither downloads nor touches anything.
    count = len(handler.requests)
    assert download_dataset(dataset, root, mirror=url, progress=False) == []
    assert len(handler.requests) == count


def test_download_makes_a_new_root_and_a_failed_one_leaves_no_dataset_folder(mirror, tmp_path, capsys):
    from mseg_semantic.cli import main

    served, url, _ = mirror
    root = tmp_path / "new" / "root"
    assert main(["data", "download", "sunrgbd", "--root", str(root), "--mirror", url, "--quiet"]) == 2  # HTTP 404
    err = capsys.readouterr().err
    assert "sun_rgbd.tgz" in err and err.count("\n") == 1
    assert root.is_dir() and list(root.iterdir()) == []  # the root is made; no empty SUNRGBD/ that looks present
    build_release("sunrgbd", served)
    assert main(["data", "download", "sunrgbd", "--root", str(root), "--mirror", url, "--quiet"]) == 0
    assert (root / "SUNRGBD" / "label38" / "train" / "00000001.png").is_file()


def test_sunrgbd_keeps_archive_on_request_and_drops_depth(mirror, tmp_path):
    served, url, handler = mirror
    build_release("sunrgbd", served)
    root = tmp_path / "root"
    download_dataset("sunrgbd", root, mirror=url, progress=False, keep_archives=True)
    folder = root / "SUNRGBD"
    assert (folder / "label38" / "train" / "00000001.png").read_bytes() == b"l1"
    assert not (folder / "label37").exists() and not (folder / "depth").exists()
    assert (folder / "sun_rgbd.tgz").read_bytes() == (served / "sun_rgbd.tgz").read_bytes()
    # The finished archive is not fetched again: with the layout gone, it is only unpacked again.
    shutil.rmtree(folder / "label38")
    count = len(handler.requests)
    assert download_dataset("sunrgbd", root, mirror=url, progress=False) == [folder / "label38"]
    assert len(handler.requests) == count and (folder / "label38" / "test" / "00000001.png").read_bytes() == b"l2"
    assert not (folder / "sun_rgbd.tgz").exists()  # keep_archives=False: deleted after a successful extraction


def test_interrupted_download_resumes_with_range(mirror, tmp_path, monkeypatch):
    served, url, handler = mirror
    paths = build_release("camvid", served)
    data = paths["LabeledApproved_full.zip"].read_bytes()
    archives = tuple(dataclasses.replace(a, size=(served / a.name).stat().st_size, md5=None,
                                         sha256=hashlib.sha256((served / a.name).read_bytes()).hexdigest())
                     for a in ARCHIVES["camvid"])  # fmt: skip
    monkeypatch.setitem(ARCHIVES, "camvid", archives)
    folder = tmp_path / "root" / "Camvid"
    folder.mkdir(parents=True)
    (folder / "LabeledApproved_full.zip.part").write_bytes(data[: len(data) // 2])
    download_dataset("camvid", tmp_path / "root", mirror=url, progress=False, keep_archives=True)
    assert ("/LabeledApproved_full.zip", f"bytes={len(data) // 2}-") in handler.requests
    assert (folder / "LabeledApproved_full.zip").read_bytes() == data
    assert (folder / "Labels32-RGB" / "0001TP_006690_L.png").read_bytes() == b"lbl"
    assert not list(folder.glob("*.part"))


def test_server_ignoring_range_restarts_cleanly(mirror, tmp_path):
    served, url, handler = mirror
    handler.ignore_range = True
    data = bytes(range(256)) * 40
    (served / "blob.bin").write_bytes(data)
    part = tmp_path / "blob.bin.part"
    part.write_bytes(data[:1000])
    http_download(f"{url}/blob.bin", part, progress=False)
    assert handler.requests[-1][1] == "bytes=1000-"  # asked to resume, got the whole file: not appended twice
    assert part.read_bytes() == data
    # A part of the full expected size is complete: no request at all.
    count = len(handler.requests)
    http_download(f"{url}/blob.bin", part, expected_size=len(data), progress=False)
    assert len(handler.requests) == count
    # Without a known size, a server that honours Range answers 416 for a complete part: nothing changes.
    handler.ignore_range = False
    http_download(f"{url}/blob.bin", part, progress=False)
    assert handler.requests[-1][1] == f"bytes={len(data)}-" and part.read_bytes() == data


def test_download_errors_name_the_url_and_keep_nothing_bad(mirror, tmp_path):
    served, url, _ = mirror
    with pytest.raises(DownloadError, match=r"missing\.zip.*HTTP 404"):
        http_download(f"{url}/missing.zip", tmp_path / "missing.zip.part", progress=False)
    (served / "page.zip").write_bytes(b"\n  <!DOCTYPE html><html><body>Please log in</body></html>")
    part = tmp_path / "page.zip.part"
    with pytest.raises(DownloadError, match="HTML page"):
        http_download(f"{url}/page.zip", part, progress=False)
    assert not part.exists()
    (served / "blob.bin").write_bytes(b"x" * 100)
    with pytest.raises(DownloadError, match="serves 100 bytes"):
        http_download(f"{url}/blob.bin", tmp_path / "blob.bin.part", expected_size=99, progress=False)
    with pytest.raises(DownloadError, match="cannot download"):
        http_download("http://127.0.0.1:9/blob.bin", tmp_path / "x.part", progress=False)


@pytest.mark.parametrize("field", ["size", "sha256", "md5"])
def test_size_or_checksum_mismatch_names_the_file(field, mirror, tmp_path, monkeypatch):
    served, url, _ = mirror
    build_release("sunrgbd", served)
    wrong = {"size": 12345, "sha256": "0" * 64, "md5": "0" * 32}[field]
    monkeypatch.setitem(ARCHIVES, "sunrgbd", (dataclasses.replace(ARCHIVES["sunrgbd"][0], **{field: wrong}),))
    message = (
        r"sun_rgbd\.tgz serves \d+ bytes but the expected file has 12,345"
        if field == "size"
        else (rf"sun_rgbd\.tgz\.part \(from {url}/sun_rgbd\.tgz\) has {field} [0-9a-f]+, expected 0+: .*Delete")
    )
    with pytest.raises(DownloadError, match=message):
        download_dataset("sunrgbd", tmp_path / "root", mirror=url, progress=False)
    folder = tmp_path / "root" / "SUNRGBD"
    assert not (folder / "sun_rgbd.tgz").exists() and not (folder / "image").exists()
    # An archive already lying there under its own name is checked against the published size too.
    if field == "size":
        folder.mkdir()  # (the failed download left none)
        (folder / "sun_rgbd.tgz").write_bytes(b"short")
        with pytest.raises(DownloadError, match=r"sun_rgbd\.tgz has 5 bytes, expected 12,345"):
            download_dataset("sunrgbd", tmp_path / "root", mirror=url, progress=False)


def test_extract_archives_for_a_gated_dataset(tmp_path):
    folder = tmp_path / "root" / "BDD"
    folder.mkdir(parents=True)
    make_zip(folder / "bdd100k_seg.zip", {
        "bdd100k/seg/images/train/0a0a0b1a-7c39d841.jpg": b"jpg",
        "bdd100k/seg/labels/train/0a0a0b1a-7c39d841_train_id.png": b"png",
        "bdd100k/seg/color_labels/train/0a0a0b1a-7c39d841_train_color.png": b"c"})  # fmt: skip
    placed = extract_archives("bdd", tmp_path / "root", progress=False)
    assert placed == [folder / "bdd100k" / "seg"]
    assert (folder / "bdd100k/seg/labels/train/0a0a0b1a-7c39d841_train_id.png").read_bytes() == b"png"
    assert (folder / "bdd100k_seg.zip").exists()  # a hand-downloaded archive is kept
    label = folder / "bdd100k/seg/labels/train/0a0a0b1a-7c39d841_train_id.png"
    label.write_bytes(b"changed")
    assert extract_archives("bdd", tmp_path / "root", progress=False) == []  # layout there: archive not opened
    assert label.read_bytes() == b"changed"
    assert extract_archives("cityscapes", tmp_path / "root", progress=False) == []  # nothing there: not an error


def test_wilddash_benchmark_archive_under_either_name(tmp_path):
    folder = tmp_path / "root" / "WildDash"
    folder.mkdir(parents=True)
    make_zip(folder / "wd_bench_01.zip", {"wd_bench_01/cn0000_100000.png": b"b", "readme.txt": b"r"})
    make_zip(folder / "wd_val_01.zip", {"wd_val_01/cn0000_100000.png": b"v",
                                        "wd_val_01/cn0000_100000_labelIds.png": b"l"})  # fmt: skip
    extract_archives("wilddash", tmp_path / "root", progress=False, keep_archives=False)
    assert files_under(folder) == {"wd_both_01/cn0000_100000.png", "wd_val_01/cn0000_100000.png",
                                   "wd_val_01/cn0000_100000_labelIds.png"}  # fmt: skip


def test_mapillary_is_unzipped_in_place(tmp_path):
    folder = tmp_path / "root" / "MapillaryVistasPublic"
    folder.mkdir(parents=True)
    make_zip(folder / "mapillary-vistas-dataset_public_v1.1.zip", {
        "config.json": b"{}", "training/images/k1.jpg": b"i", "training/labels/k1.png": b"l",
        "training/instances/k1.png": b"n", "validation/labels/k2.png": b"l2"})  # fmt: skip
    placed = extract_archives("mapillary", tmp_path / "root", progress=False)
    assert {p.name for p in placed} == {"config.json", "training", "validation"}
    assert (folder / "validation/labels/k2.png").read_bytes() == b"l2"


@pytest.mark.parametrize("kind", ["zip-dotdot", "zip-absolute", "tar-dotdot", "tar-symlink"])
def test_unsafe_members_are_refused(kind, tmp_path):
    root = tmp_path / "root"
    if kind.startswith("zip"):
        folder, name = root / "BDD", "bdd100k_seg.zip"
        folder.mkdir(parents=True)
        evil = "bdd100k/seg/../../../evil.txt" if kind == "zip-dotdot" else "/tmp/evil.txt"
        make_zip(folder / name, {"bdd100k/seg/labels/train/a_train_id.png": b"ok", evil: b"evil"})
        dataset = "bdd"
    else:
        folder, name = root / "IDD", "idd-segmentation.tar.gz"
        folder.mkdir(parents=True)
        members = {"IDD_Segmentation/gtFine/train/0/000_gtFine_polygons.json": b"{}"}
        if kind == "tar-dotdot":
            members["IDD_Segmentation/../../evil.txt"] = b"evil"
        links = {"IDD_Segmentation/gtFine/link": "../../../../outside"} if kind == "tar-symlink" else None
        make_tar(folder / name, members, links=links)
        dataset = "idd"
    with pytest.raises(InputError, match=rf"{name}.*refusing to extract member"):
        extract_archives(dataset, root, progress=False)
    assert not (tmp_path / "evil.txt").exists() and not (root / "evil.txt").exists()
    assert sorted(p.name for p in folder.iterdir()) == [name]  # no half layout, no staging folder


def test_damaged_archive_leaves_no_half_layout(tmp_path):
    folder = tmp_path / "root" / "Cityscapes"
    folder.mkdir(parents=True)
    (folder / "leftImg8bit_trainvaltest.zip").write_bytes(b"this is not a zip file" * 10)
    with pytest.raises(InputError, match=r"leftImg8bit_trainvaltest\.zip: damaged archive"):
        extract_archives("cityscapes", tmp_path / "root", progress=False)
    # A zip whose second member is corrupt fails half-way through unpacking: nothing appears in the layout.
    path = make_zip(folder / "gtFine_trainvaltest.zip", {
        "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png": b"A" * 5000,
        "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png": b"B" * 5000})  # fmt: skip
    data = bytearray(path.read_bytes())
    where = data.index(b"B" * 100)
    data[where : where + 10] = b"C" * 10
    path.write_bytes(bytes(data))
    (folder / "leftImg8bit_trainvaltest.zip").unlink()
    stale = folder / ".gtFine_trainvaltest.zip.extracting"
    stale.mkdir()
    (stale / "junk").write_bytes(b"from a killed run")
    with pytest.raises(InputError, match=r"gtFine_trainvaltest\.zip: damaged archive"):
        extract_archives("cityscapes", tmp_path / "root", progress=False)
    assert sorted(p.name for p in folder.iterdir()) == ["gtFine_trainvaltest.zip"]


def test_archive_without_the_expected_content(tmp_path):
    folder = tmp_path / "root" / "ScanNet"
    folder.mkdir(parents=True)
    make_zip(folder / "scannet_frames_25k.zip", {"scans/scene0000_00/color/000000.jpg": b"c"})
    message = r"scannet_frames_25k\.zip: has no scannet_frames_25k inside \(top level: scans\)"
    with pytest.raises(InputError, match=message):
        extract_archives("scannet", tmp_path / "root", progress=False)


def test_manual_instructions(tmp_path):
    text = manual_instructions("cityscapes")
    assert "https://www.cityscapes-dataset.com" in text and "ROOT/Cityscapes/" in text
    assert "gtFine_trainvaltest.zip" in text and "leftImg8bit_trainvaltest.zip" in text
    assert str(tmp_path / "Cityscapes") in manual_instructions("cityscapes", tmp_path)
    assert manual_instructions("ade20k") is None
    for dataset, archives in MANUAL_ARCHIVES.items():
        assert all(a.name in REGISTRATION[dataset] for a in archives)
    with pytest.raises(InputError) as exc:
        download_dataset("cityscapes", tmp_path, progress=False)
    assert str(exc.value) == manual_instructions("cityscapes", tmp_path)
    with pytest.raises(InputError, match="unknown dataset 'cityscape'"):
        manual_instructions("cityscape")
