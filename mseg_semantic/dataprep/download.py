"""Download and unpack the archives of the 13 MSeg datasets into the layout of the original ``mseg-api`` scripts.

Six datasets are public (ADE20K, COCO panoptic, CamVid, PASCAL VOC 2012, PASCAL-Context, SUN RGB-D):
:func:`download_dataset` fetches their archives, checks size and checksum where a reliable one is published, and
unpacks them. The other seven need a registration and a browser: :func:`manual_instructions` says what to fetch
and where to put it, and :func:`extract_archives` (which ``mseg data prepare`` calls first) unpacks whatever known
archive it finds in the dataset folder.

Why it is built this way:

* The archives are huge (COCO's ``train2017.zip`` is 19 GB) and links break, so downloads resume from a ``.part``
  file (:func:`mseg_semantic.downloads.http_download`) and an archive only gets its final name once verified.
* A killed extraction must not leave a half layout that a later run mistakes for a finished one. Each archive is
  unpacked into a temporary folder inside the dataset folder and its pieces are then *renamed* into place (same
  file system, so each rename is atomic). A target that exists was therefore completely extracted, and a dataset
  whose targets all exist is skipped without reading the archive. A leftover temporary folder is removed.
* Archives from the web are untrusted input: members with absolute paths or ``..`` (zip-slip), links pointing
  outside the archive and device files are refused before anything is written.
* Archives are deleted after a successful extraction by :func:`download_dataset` (``keep_archives=False``, as the
  original scripts do: they can be fetched again) and kept by :func:`extract_archives` (``keep_archives=True``:
  a registration-gated archive is tedious to obtain again).
* The layout is the original's, fixed where the original was inconsistent: WildDash's benchmark archive is
  accepted as ``wd_both_01.zip`` or ``wd_bench_01.zip`` and always lands in ``WildDash/wd_both_01/`` (the original
  downloaded one name and extracted the other).
"""

from __future__ import annotations

import errno
import gzip
import os
import posixpath
import shutil
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from mseg_semantic.dataprep.datasets import LOCK_NAME, dataset_lock, get_dataset
from mseg_semantic.downloads import file_digest, http_download
from mseg_semantic.errors import DownloadError, InputError

MIRROR_ENV = "MSEG_DATA_MIRROR"
"""Environment variable with a mirror URL, used when ``download_dataset(mirror=None)``."""


@dataclass(frozen=True)
class Archive:
    """One archive of a dataset and how it is unpacked into the dataset folder (``ROOT/<folder>/``).

    ``moves`` are ``(source, target)`` pairs: ``source`` is a path inside the unpacked archive (``a|b``: the first
    of these alternatives that exists; ``.``: the whole archive content as one folder; ``*``: every top-level
    entry, each moved to ``target/<entry>``), ``target`` a path under the dataset folder. Whatever no move names is
    dropped (``depth/`` of SUN RGB-D, ``VOCdevkit/`` of VOC). ``inner`` names archives inside this one that are
    unpacked where they lie before the moves (COCO's panoptic PNG zips). ``layout`` lists the paths whose presence
    means "already extracted"; by default the targets of the moves.
    """

    name: str
    url: str | None = None  # None: only obtainable by hand after registration
    size: int | None = None  # bytes
    md5: str | None = None
    sha256: str | None = None
    moves: tuple[tuple[str, str], ...] = ()
    inner: tuple[str, ...] = ()
    layout: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()  # other file names the same archive is found under

    def __post_init__(self) -> None:
        if not self.moves:
            raise ValueError(f"archive {self.name}: `moves` must say what goes where")

    @property
    def targets(self) -> tuple[str, ...]:
        return self.layout or tuple(target for _, target in self.moves)

    @property
    def file_names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


# Sizes and checksums are only given where a published value exists (never computed here from a guess):
#   [tfds]        tensorflow/datasets tensorflow_datasets/url_checksums/{ade20k,coco,coco2017_panoptic}.txt
#   [torchvision] pytorch/vision torchvision/datasets/voc.py (DATASET_YEAR_DICT md5)
#   [coco]        the md5 sums published with the COCO 2017 files and repeated by many loaders
#   [wget]        byte count reported by the official host (VOC 2012: 1,999,639,040)
# URLs and layouts are those of mseg-api's download_scripts/mseg_download_*.sh.
ARCHIVES: dict[str, tuple[Archive, ...]] = {
    "ade20k": (
        Archive("ADE20K_2016_07_26.zip", "https://groups.csail.mit.edu/vision/datasets/ADE20K/ADE20K_2016_07_26.zip",
                moves=(("ADE20K_2016_07_26", "ADE20K_2016_07_26"),)),  # about 3.8 GB; no published checksum
        Archive("ADEChallengeData2016.zip", "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip",
                size=967_382_037,  # [tfds]
                sha256="7ff1be44964418441f542a7cc1e1a650e7dc0fc275f5d23252bc9bbdbc977b29",  # [tfds]
                moves=(("ADEChallengeData2016", "ADEChallengeData2016"),)),
    ),
    "coco-panoptic": (
        Archive("panoptic_annotations_trainval2017.zip",
                "http://images.cocodataset.org/annotations/panoptic_annotations_trainval2017.zip",
                size=860_725_834,  # [tfds]
                md5="4170db65fc022c9c296af880dbca6055",  # [coco]
                sha256="c05f76d2129b6b561eb70efe16e7006df62f73fb92889132d373b9d90e31a370",  # [tfds]
                inner=("annotations/panoptic_train2017.zip", "annotations/panoptic_val2017.zip"),
                moves=tuple((f"annotations/{n}", f"annotations/{n}") for n in (
                    "panoptic_train2017.json", "panoptic_val2017.json", "panoptic_train2017", "panoptic_val2017"))),
        Archive("train2017.zip", "http://images.cocodataset.org/zips/train2017.zip",
                size=19_336_861_798,  # [tfds]
                md5="cced6f7f71b7629ddf16f17bbcfab6b2",  # [coco]
                sha256="69a8bb58ea5f8f99d24875f21416de2e9ded3178e903f1f7603e283b9e06d929",  # [tfds]
                moves=(("train2017", "images/train2017"),)),
        Archive("val2017.zip", "http://images.cocodataset.org/zips/val2017.zip",
                size=815_585_330,  # [tfds]
                md5="442b8da7639aecaf257c1dceb8ba8c80",  # [coco]
                sha256="4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05",  # [tfds]
                moves=(("val2017", "images/val2017"),)),
    ),
    "camvid": (
        Archive("701_StillsRaw_full.zip",
                "http://web4.cs.ucl.ac.uk/staff/g.brostow/MotionSegRecData/files/701_StillsRaw_full.zip",
                moves=(("701_StillsRaw_full", "701_StillsRaw_full"),)),
        # The label zip has its PNGs at the top level; the original unzips it with `-d Labels32-RGB`.
        Archive("LabeledApproved_full.zip",
                "http://web4.cs.ucl.ac.uk/staff/g.brostow/MotionSegRecData/data/LabeledApproved_full.zip",
                moves=((".", "Labels32-RGB"),)),
    ),
    "voc2012": (
        Archive("VOCtrainval_11-May-2012.tar",
                "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                size=1_999_639_040,  # [wget]
                md5="6cd6e144f989b92b3379bac3b3de84fd",  # [torchvision]
                moves=(("VOCdevkit/VOC2012/JPEGImages", "JPEGImages"),)),
        # SBD "train_aug" labels as repackaged by DrSleep/tensorflow-deeplab-resnet (also holds __MACOSX/, dropped).
        Archive("SegmentationClassAug.zip", "https://www.dropbox.com/s/oeu149j8qtbs1x0/SegmentationClassAug.zip?dl=1",
                moves=(("SegmentationClassAug", "SegmentationClassAug"),)),
    ),
    "pascal-context": (
        Archive("VOCtrainval_03-May-2010.tar",
                "http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar",
                md5="da459979d0c395079b5c75ee67908abb",  # [torchvision]
                moves=(("VOCdevkit/VOC2010/JPEGImages", "JPEGImages"),)),
        # The .mat label files; `mseg data prepare` converts them to PNGs (they are kept, unlike in the original).
        Archive("trainval.tar.gz", "https://cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz",
                moves=(("trainval", "trainval"),)),
    ),
    "sunrgbd": (
        # Chris Choy's preprocessed release. Its `label37` folder holds 38 values (0 = unlabeled): renamed.
        Archive("sun_rgbd.tgz", "http://cvgl.stanford.edu/data2/sun_rgbd.tgz",
                moves=(("image", "image"), ("label37", "label38"))),
    ),
}  # fmt: skip
"""Archives of the datasets that need no registration, in download order, keyed by dataset name."""

MANUAL_ARCHIVES: dict[str, tuple[Archive, ...]] = {
    "bdd": (Archive("bdd100k_seg.zip", moves=(("bdd100k/seg", "bdd100k/seg"),)),),
    "cityscapes": (
        Archive("gtFine_trainvaltest.zip", moves=(("gtFine", "gtFine"),)),  # its README and license.txt dropped
        Archive("leftImg8bit_trainvaltest.zip", moves=(("leftImg8bit", "leftImg8bit"),)),
    ),
    "idd": (Archive("idd-segmentation.tar.gz", moves=(("IDD_Segmentation", "IDD_Segmentation"),)),),
    "kitti": (Archive("data_semantics.zip", moves=(("training", "training"), ("testing", "testing"))),),
    # Unzipped in place as the original does (training/, validation/, testing/, config.json, ...).
    "mapillary": (
        Archive("mapillary-vistas-dataset_public_v1.1.zip", moves=(("*", "."),), layout=("training", "validation")),
    ),
    "scannet": (Archive("scannet_frames_25k.zip", moves=(("scannet_frames_25k", "scannet_frames_25k"),)),),
    "wilddash": (
        Archive("wd_val_01.zip", moves=(("wd_val_01", "wd_val_01"),)),
        Archive("wd_both_01.zip", aliases=("wd_bench_01.zip",), moves=(("wd_both_01|wd_bench_01", "wd_both_01"),)),
    ),
}
"""Archives of the registration-gated datasets, which the user downloads by hand (see :data:`REGISTRATION`)."""

_PREPARE = "`mseg data prepare` accepts the archives as they are (it extracts them) or their extracted folders."

REGISTRATION: dict[str, str] = {
    "bdd": (
        "BDD100K needs a (free, immediately approved) account: register at https://bdd-data.berkeley.edu,\n"
        "log in, open Download, accept the terms and download 'Segmentation' (bdd100k_seg.zip, 1.3 GB).\n"
        f"Put bdd100k_seg.zip in ROOT/BDD/ (extracted: ROOT/BDD/bdd100k/seg/). {_PREPARE}"
    ),
    "cityscapes": (
        "Cityscapes needs an account: register at https://www.cityscapes-dataset.com (activation by email),\n"
        "log in and download gtFine_trainvaltest.zip (241 MB) and leftImg8bit_trainvaltest.zip (11 GB) from\n"
        "https://www.cityscapes-dataset.com/downloads/ in a browser.\n"
        "Put both zips in ROOT/Cityscapes/ (extracted: ROOT/Cityscapes/gtFine/ and ROOT/Cityscapes/leftImg8bit/).\n"
        f"{_PREPARE}"
    ),
    "idd": (
        "IDD needs an account: register at https://idd.insaan.iiit.ac.in, log in and download\n"
        "'IDD - Segmentation (IDD 20k Part I)' (idd-segmentation.tar.gz, 18.5 GB; Part II is not used).\n"
        "Put idd-segmentation.tar.gz in ROOT/IDD/ (extracted: ROOT/IDD/IDD_Segmentation/). "
        f"{_PREPARE}"
    ),
    "kitti": (
        "KITTI semantics needs an account: register at https://www.cvlibs.net/datasets/kitti/ and request\n"
        "data_semantics.zip (semantic segmentation benchmark, 200 training images); the link arrives by email.\n"
        f"Put data_semantics.zip in ROOT/KITTI/ (extracted: ROOT/KITTI/training/). {_PREPARE}"
    ),
    "mapillary": (
        "Mapillary Vistas needs a licence: request the research edition at https://www.mapillary.com/dataset/vistas;\n"
        "a download link for mapillary-vistas-dataset_public_v1.1.zip arrives by email within days (MSeg uses\n"
        "v1.1, 66 classes; later versions have other labels).\n"
        "Put the zip in ROOT/MapillaryVistasPublic/ (extracted: ROOT/MapillaryVistasPublic/training/ and\n"
        f"validation/). {_PREPARE}"
    ),
    "scannet": (
        "ScanNet needs a signed licence: fill in the ScanNet Terms of Use (see http://www.scan-net.org) and email\n"
        "it to scannet@googlegroups.com. The reply holds a download script; fetch the official 25k-frame subset\n"
        "scannet_frames_25k.zip (5.6 GB; BASE_URL of that script + v2/tasks/scannet_frames_25k.zip).\n"
        f"Put it in ROOT/ScanNet/ (extracted: ROOT/ScanNet/scannet_frames_25k/). {_PREPARE}"
    ),
    "wilddash": (
        "WildDash needs an account: register at https://wilddash.cc, log in and download the WildDash 1 files\n"
        "wd_val_01.zip (122 MB) and wd_both_01.zip (or wd_bench_01.zip, 255 MB) from https://wilddash.cc/download.\n"
        "Put both zips in ROOT/WildDash/ (extracted: ROOT/WildDash/wd_val_01/ and ROOT/WildDash/wd_both_01/).\n"
        f"{_PREPARE}"
    ),
}
"""What to download by hand for each registration-gated dataset, and where to put it (``ROOT`` = the data root)."""


def manual_instructions(dataset: str, root: str | os.PathLike | None = None) -> str | None:
    """How to obtain a registration-gated ``dataset`` by hand, or None when :func:`download_dataset` can fetch it.

    With ``root``, the text names the real folders instead of ``ROOT``. Unknown names raise :class:`InputError`."""
    text = REGISTRATION.get(get_dataset(dataset).name)
    if text is None or root is None:
        return text
    return text.replace("ROOT/", f"{Path(root)}{os.sep}")


def download_dataset(
    dataset: str,
    root: str | os.PathLike,
    *,
    mirror: str | None = None,
    progress: bool = True,
    keep_archives: bool = False,
) -> list[Path]:
    """Download and unpack the public ``dataset`` into ``root/<its folder>/``; returns the paths it placed.

    Each archive is skipped when its layout is already there; otherwise it is downloaded into the dataset folder
    (resuming a ``.part`` left by an interrupted run; an archive already there under its own name is reused after a
    size check), verified (size, then sha256 or else md5, where published), unpacked into the original layout and,
    unless ``keep_archives``, deleted. ``mirror`` (or ``$MSEG_DATA_MIRROR``): a URL prefix serving the archives by
    file name (``MIRROR/<archive name>``) instead of the original hosts, for air-gapped sites.

    Raises:
        InputError: unknown dataset; a registration-gated one (the message is :func:`manual_instructions`);
            a damaged archive or one without the expected content.
        DownloadError: the download failed or the file is not the expected one (the message names it).
    """
    spec = get_dataset(dataset)
    archives = ARCHIVES.get(spec.name)
    if archives is None:
        raise InputError(manual_instructions(spec.name, root) or f"{spec.name}: no download recipe")
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    folder = Path(root) / spec.top
    new = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    placed: list[Path] = []
    try:
        with dataset_lock(Path(root), spec, "download"):
            for archive in archives:  # one at a time: an archive is deleted before the next is fetched (peak disk)
                if _extracted(archive, folder):
                    continue
                path = _fetch(archive, folder, mirror, progress)
                placed += _unpack(archive, path, folder, progress=progress, keep_archive=keep_archives)
    except BaseException:
        if new and {p.name for p in folder.iterdir()} <= {LOCK_NAME}:
            shutil.rmtree(folder, ignore_errors=True)  # nothing fetched: no empty folder that status calls present
        raise
    return placed


def extract_archives(
    dataset: str, root: str | os.PathLike, *, progress: bool = True, keep_archives: bool = True
) -> list[Path]:
    """Unpack the known archives of ``dataset`` that lie in ``root/<its folder>/``; returns the paths it placed.

    Works for every dataset, public or registration-gated. An archive whose layout is already there is not opened;
    missing archives are not an error (the folders may have been extracted by hand). Archives are kept unless
    ``keep_archives`` is False. Raises :class:`InputError` for a damaged archive, one without the expected content
    or one with unsafe members (absolute paths, ``..``)."""
    spec = get_dataset(dataset)
    folder = Path(root) / spec.top
    placed: list[Path] = []
    for archive in ARCHIVES.get(spec.name, ()) + MANUAL_ARCHIVES.get(spec.name, ()):
        if _extracted(archive, folder):
            continue
        path = next((folder / n for n in archive.file_names if (folder / n).is_file()), None)
        if path is not None:
            placed += _unpack(archive, path, folder, progress=progress, keep_archive=keep_archives)
    return placed


# -- download ------------------------------------------------------------------------------------------------------


def _fetch(archive: Archive, folder: Path, mirror: str | None, progress: bool) -> Path:
    """The verified archive in ``folder``: found there, or downloaded into ``<name>.part`` and renamed when good."""
    target = folder / archive.name
    if target.is_file():
        _check_size(archive, target, "")
        return target
    url = f"{mirror.rstrip('/')}/{archive.name}" if mirror else archive.url
    if url is None:
        raise InputError(f"{archive.name}: no download address; put the file in {folder} by hand")
    part = target.with_name(f"{target.name}.part")
    folder.mkdir(parents=True, exist_ok=True)
    if archive.size is not None:
        have = part.stat().st_size if part.exists() else 0
        free = shutil.disk_usage(folder).free
        if archive.size - have > free:
            raise DownloadError(f"{folder}: {archive.name} needs {_gb(archive.size - have)} more, only {_gb(free)} "
                                "free; free some space and run again")  # fmt: skip
    http_download(url, part, expected_size=archive.size, progress=progress, desc=archive.name)
    _check_size(archive, part, f" (from {url})")
    for algorithm in ("sha256", "md5"):  # the stronger published checksum; hashing twice would double the wait
        expected = getattr(archive, algorithm)
        if expected:
            actual = file_digest(part, algorithm, progress=progress)
            if actual != expected.lower():
                raise DownloadError(
                    f"{part} (from {url}) has {algorithm} {actual}, expected {expected}: the download is damaged "
                    f"or not the published {archive.name}. Delete {part.name} and run again (or try later or "
                    "another mirror)"
                )
            break
    os.replace(part, target)
    return target


def _check_size(archive: Archive, path: Path, origin: str) -> None:
    size = path.stat().st_size
    if archive.size is not None and size != archive.size:
        raise DownloadError(
            f"{path}{origin} has {size:,} bytes, expected {archive.size:,}: it is incomplete or not the published "
            f"{archive.name}. Delete it and run again"
        )


def _gb(size: int) -> str:
    return f"{size / 1e9:.1f} GB"


# -- extraction ----------------------------------------------------------------------------------------------------


def _extracted(archive: Archive, folder: Path) -> bool:
    return all((folder / target).exists() for target in archive.targets)


def _unpack(archive: Archive, path: Path, folder: Path, *, progress: bool, keep_archive: bool) -> list[Path]:
    """Unpack ``path`` into a temporary folder inside ``folder``, rename its pieces into place, return them."""
    staging = folder / f".{archive.name}.extracting"
    if staging.exists():
        shutil.rmtree(staging)  # left by a killed run: never trusted, never resumed
    try:
        staging.mkdir(parents=True)
        unpack_archive(path, staging, progress=progress)
        for inner in archive.inner:
            nested = staging / inner
            if not nested.is_file():
                raise InputError(f"{path}: {inner} is missing inside; not the expected {archive.name}. "
                                 "Delete it and download it again")  # fmt: skip
            unpack_archive(nested, nested.parent, progress=progress)
            nested.unlink()
        placed = _place(archive, path, staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # what no move names (and everything, after an error)
    if not keep_archive:
        path.unlink()
    return placed


def _place(archive: Archive, path: Path, staging: Path, folder: Path) -> list[Path]:
    placed = []
    for source, target in archive.moves:
        if source == "*":
            pairs = [(entry, folder / target / entry.name) for entry in sorted(staging.iterdir())]
        else:
            pairs = [(_find_member(archive, path, staging, source), folder / target)]
        for src, dst in pairs:
            if dst.exists() or dst.is_symlink():
                continue  # placed by an earlier, interrupted run (a rename is all-or-nothing)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.rename(src, dst)
            placed.append(dst)
    return placed


def _find_member(archive: Archive, path: Path, staging: Path, source: str) -> Path:
    if source == ".":
        return staging
    for alternative in source.split("|"):
        if (staging / alternative).exists():
            return staging / alternative
    found = ", ".join(sorted(p.name for p in staging.iterdir())[:8]) or "nothing"
    raise InputError(
        f"{path}: has no {source.replace('|', ' or ')} inside (top level: {found}); not the expected "
        f"{archive.name}. Delete it and download it again"
    )


def unpack_archive(path: str | os.PathLike, dest: str | os.PathLike, *, progress: bool = True) -> None:
    """Unpack the zip or tar (``.tar``, ``.tar.gz``, ``.tgz``) archive ``path`` into the folder ``dest``, safely.

    Members with absolute paths or ``..``, links leading outside ``dest`` and device files are refused
    (:class:`InputError` naming the archive and the member) before the member is written. A damaged archive or a
    full disk is an :class:`InputError` too; the caller removes what was written."""
    path, dest = Path(path), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if path.name.endswith(".zip") or zipfile.is_zipfile(path):
            _unpack_zip(path, dest, progress)
        elif path.name.endswith((".tar", ".tar.gz", ".tgz")) or tarfile.is_tarfile(path):
            _unpack_tar(path, dest, progress)
        else:
            raise InputError(f"{path}: not a zip or tar archive (damaged or a different file); delete it and "
                             "download it again")  # fmt: skip
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise InputError(f"{path}: damaged archive ({exc}); delete it and download it again") from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise InputError(f"{dest.parent}: disk full while extracting {path.name}; free some space and run "
                             "again") from None  # fmt: skip
        raise InputError(f"extracting {path} into {dest} failed: {exc}") from None


def _unsafe(path: Path, name: str, why: str = "an absolute path or '..' would write outside the target folder"
            ) -> InputError:  # fmt: skip
    return InputError(f"{path}: refusing to extract member {name!r}: {why}; this is not a genuine release of the "
                      "dataset (delete the archive)")  # fmt: skip


def _check_member_name(path: Path, name: str) -> None:
    normal = name.replace("\\", "/")
    if normal.startswith("/") or (len(normal) > 1 and normal[1] == ":") or ".." in normal.split("/"):
        raise _unsafe(path, name)


def _unpack_zip(path: Path, dest: Path, progress: bool) -> None:
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        for member in members:
            _check_member_name(path, member.filename)
        total = sum(member.file_size for member in members)
        free = shutil.disk_usage(dest).free
        if total > free:
            raise InputError(f"{dest.parent}: extracting {path.name} needs {_gb(total)}, only {_gb(free)} free; "
                             "free some space and run again")  # fmt: skip
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"extracting {path.name}",
                  disable=not progress) as bar:  # fmt: skip
            for member in members:
                archive.extract(member, dest)
                bar.update(member.file_size)


_TAR_FILTER = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # extra safety where Python has it


def _unpack_tar(path: Path, dest: Path, progress: bool) -> None:
    with (
        open(path, "rb") as raw,
        tarfile.open(fileobj=raw, mode="r:*") as archive,
        tqdm(total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024,
             desc=f"extracting {path.name}", disable=not progress) as bar,
    ):  # fmt: skip
        for member in archive:  # streamed: a .tar.gz is read once, front to back
            _check_member_name(path, member.name)
            if member.issym() or member.islnk():
                base = posixpath.dirname(member.name) if member.issym() else ""
                link = posixpath.normpath(posixpath.join(base, member.linkname))
                if member.linkname.startswith("/") or link == ".." or link.startswith("../"):
                    raise _unsafe(path, member.name, f"its link target {member.linkname!r} lies outside the archive")
            elif not (member.isfile() or member.isdir()):
                raise _unsafe(path, member.name, "device files and pipes are not allowed")
            archive.extract(member, dest, **_TAR_FILTER)
            bar.update(raw.tell() - bar.n)
