"""Throughput and peak memory of ``mseg data prepare`` / ``mseg data relabel`` on synthetic full-size inputs.

    python benchmarks/dataprep.py                          # everything (about 5-10 minutes on 2 cores)
    python benchmarks/dataprep.py --skip-json              # only the prepare/relabel runs
    python benchmarks/dataprep.py --images 50 --coco-images 100 --coco-json-images 20000 --keep

Nothing from ``../shared`` is needed: every input is built in a temporary folder (removed unless ``--keep``).

1. Cityscapes: ``--images`` 2048x1024 raw ``gtFine/train/<city>/*_gtFine_labelIds.png`` (cityscapes-34 values in
   blobs: a few hundred filled polygons over road/building/sky bands) with a ``*_gtFine_polygons.json`` of 40
   objects each (also painted into the label), for images spread over the shipped train list. Prepare (34 -> 19),
   then relabel (polygon masks, non-strict; writes both the 19- and the 34-class relabeled file of each image) with
   a records folder of 3 record lines per image (``seq<city>_<stem>_<object position>.jpg``).
2. COCO panoptic: ``--coco-images`` 640x480 panoptic PNGs (~15 segments, ids R + 256 G + 65536 B) and
   ``annotations/panoptic_train2017.json`` (an empty ``panoptic_val2017.json`` beside it: prepare reads both);
   prepare (panoptic -> 201 -> 133), then relabel (strict: each record's ``from`` is the class its segment holds in
   coco-panoptic-133-relabeled) with 3 record lines per image.
3. Indexing the COCO train JSON: a synthetic ``--coco-json-images`` panoptic JSON (images array, ~11 segments per
   annotation with bbox/area/iscrowd) is read in fresh processes by ``panoptic_index`` (streamed) and by
   ``json.load``; wall time and peak RSS of each, and of a process that only imports the module, are printed.

Every measured command is a fresh subprocess (``python -m mseg_semantic data ... --overwrite --quiet``) so that each
run does all the work. Its wall time includes the interpreter and package start-up (~2.5-3 s: ``mseg_semantic.cli``
imports torch) and the fixed costs of a run (reading the split lists and records, COCO's JSON); to leave those out
of the rate, the same command is also run on a 1-image ``--list`` (the faster of two runs) and the rate is (N - 1) /
(t_N - t_1). Peak memory is the maximum resident set size of the command's process tree as reported by
``/usr/bin/time -v`` (or, without it, by a fresh wrapper process's ``RUSAGE_CHILDREN``): the largest single process,
so with 2 workers it is the largest of the parent and the two workers (each counts the pages it shares with the
parent). The machine may be shared: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import cpu_description  # noqa: E402  (benchmarks/machine.py, beside this script)

from mseg_semantic.data.lists import list_lines  # noqa: E402
from mseg_semantic.taxonomy import get_taxonomy  # noqa: E402
from mseg_semantic.taxonomy.converter import TaxonomyConverter  # noqa: E402

TIME = Path("/usr/bin/time")
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
CITY_SIZE = (1024, 2048)  # (height, width)
COCO_SIZE = (480, 640)
RECORD_LINES = 3  # record lines per image
WRAPPER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.run(sys.argv[2:]).returncode\n"
    "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    "sys.exit(code)\n"
)


# ---------------------------------------------------------------------- machine
def machine_line() -> str:
    import PIL

    cpu = cpu_description()
    return (
        f"{cpu}, {os.cpu_count()} logical cores, Python {platform.python_version()}, numpy {np.__version__}, "
        f"OpenCV {cv2.__version__}, Pillow {PIL.__version__}"
    )


def load_line() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load average: unknown"
    return f"load average (1/5/15 min): {one:.2f} {five:.2f} {fifteen:.2f}"


def memory_method() -> str:
    if TIME.is_file():
        return "peak RSS from /usr/bin/time -v (largest single process of the tree)"
    return "peak RSS from RUSAGE_CHILDREN of a fresh wrapper process (largest single process of the tree)"


def measure(command: list[str]) -> tuple[float, float, str]:
    """(wall seconds, peak RSS in MB, stdout) of ``command``; raises with its stderr when it fails."""
    with tempfile.NamedTemporaryFile(suffix=".rss", delete=False) as handle:
        report = Path(handle.name)
    try:
        if TIME.is_file():
            full = [str(TIME), "-v", "-o", str(report), *command]
        else:
            full = [sys.executable, "-c", WRAPPER, str(report), *command]
        start = time.perf_counter()
        done = subprocess.run(full, env=ENV, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        text = report.read_text()
    finally:
        report.unlink(missing_ok=True)
    if TIME.is_file():
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
        if found is None:
            raise RuntimeError(f"no maximum resident set size in /usr/bin/time's report:\n{text}")
        kbytes = int(found.group(1))
    else:
        kbytes = int(text)
    return seconds, kbytes / 1024, done.stdout


def mseg(*args: str) -> list[str]:
    return [sys.executable, "-m", "mseg_semantic", "data", *args, "--overwrite", "--quiet"]


# ---------------------------------------------------------------------- synthetic shapes
def star_polygon(rng: np.random.Generator, cx: float, cy: float, radius: float, points: int) -> np.ndarray:
    """A simple (non-self-intersecting) polygon: sorted angles, random radii around a centre; int32 (points, 2)."""
    angles = np.sort(rng.uniform(0, 2 * np.pi, points))
    radii = radius * rng.uniform(0.5, 1.0, points)
    xy = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    return np.round(xy).astype(np.int32)


def blobs(rng: np.random.Generator, canvas: np.ndarray, count: int, values: np.ndarray, scale: float) -> None:
    """Paint ``count`` random polygons and rectangles with values drawn from ``values``, mostly small, a few large."""
    h, w = canvas.shape
    for _ in range(count):
        value = int(rng.choice(values))
        size = scale * rng.pareto(2.0) + 4
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        if rng.random() < 0.3:
            x0, y0 = int(cx - size), int(cy - size / 2)
            cv2.rectangle(canvas, (x0, y0), (int(cx + size), int(cy + size / 2)), (value,), thickness=-1)
        else:
            cv2.fillPoly(canvas, [star_polygon(rng, cx, cy, size, int(rng.integers(5, 13)))], (value,))


# ---------------------------------------------------------------------- Cityscapes
def cityscapes_tree(root: Path, count: int) -> tuple[list[str], Path]:
    """Raw labels and polygon JSONs of ``count`` train images spread over the shipped list; (image paths, records)."""
    _, lines = list_lines("cityscapes-34", "train")
    lines = [fields for fields in lines if fields]
    step = max(1, len(lines) // count)
    chosen = lines[::step][:count]
    names = get_taxonomy("cityscapes-34").classes
    base = root / "Cityscapes"
    h, w = CITY_SIZE
    record = []
    for number, (image, label) in enumerate(chosen):
        rng = np.random.default_rng(number)
        canvas = np.full(CITY_SIZE, 7, dtype=np.uint8)  # road
        canvas[: h // 3] = 23  # sky
        canvas[h // 3 : h // 2] = 11  # building
        canvas[h // 2 : h // 2 + h // 12, : w // 4] = 8  # sidewalk
        blobs(rng, canvas, 300, np.arange(34), 40.0)
        objects = []
        for _ in range(40):
            value = int(rng.integers(4, 34))
            radius = 30 * rng.pareto(2.0) + 12
            polygon = star_polygon(rng, rng.uniform(0, w), rng.uniform(h / 4, h), radius, int(rng.integers(10, 60)))
            polygon = np.clip(polygon, 0, [w - 1, h - 1]).astype(np.int32)
            cv2.fillPoly(canvas, [polygon], (value,))
            objects.append({"label": names[value], "polygon": polygon.tolist()})
        path = base / label
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), canvas):
            raise RuntimeError(f"{path}: cannot write")
        polygons = path.with_name(path.name.replace("_gtFine_labelIds.png", "_gtFine_polygons.json"))
        polygons.write_text(json.dumps({"imgHeight": h, "imgWidth": w, "objects": objects}))
        city, stem = path.parent.name, Path(image).stem
        for position in sorted(rng.choice(len(objects), RECORD_LINES, replace=False).tolist()):
            record.append(f"seq{city}_{stem}_{position}.jpg")
    records = root / "records-cityscapes"
    (records / "cityscapes_rider").mkdir(parents=True)
    name = "cityscapes_rider/cityscapes_train_cityscapes_rider_to_bicyclist.txt"
    (records / name).write_text("\n".join(record) + "\n")
    rows = [f"{task}\ttrain\trider_other\tbicyclist\t{name}" for task in ("cityscapes-19", "cityscapes-34")]
    (records / "records.tsv").write_text("dataset\tsplit\tfrom\tto\tfile\n" + "\n".join(rows) + "\n")
    return [fields[0] for fields in chosen], records


# ---------------------------------------------------------------------- COCO panoptic
def coco_categories() -> list[dict]:
    classes = get_taxonomy("coco-panoptic-201").classes
    return [
        {"supercategory": "thing" if i <= 90 else "stuff", "isthing": int(i <= 90), "id": i, "name": classes[i]}
        for i in range(1, 201)
        if classes[i] != "unlabeled"
    ]


def coco_stem(number: int) -> str:
    return f"{9 + 7 * number:012d}"


def coco_image_entry(number: int, height: int = 480, width: int = 640) -> dict:
    stem = coco_stem(number)
    return {
        "license": 1 + number % 8,
        "file_name": f"{stem}.jpg",
        "coco_url": f"http://images.cocodataset.org/train2017/{stem}.jpg",
        "height": height,
        "width": width,
        "date_captured": "2013-11-14 11:18:45",
        "flickr_url": f"http://farm{1 + number % 9}.staticflickr.com/{number}/{stem}_0123456789_z.jpg",
        "id": int(stem),
    }


def coco_tree(root: Path, count: int) -> tuple[list[str], Path]:
    """Panoptic PNGs and JSONs of ``count`` train images; (image paths, records folder)."""
    categories = [c["id"] for c in coco_categories()]
    converter = TaxonomyConverter()
    to133 = converter.lookup_table("coco-panoptic-201", "coco-panoptic-133")
    to_relabeled = converter.lookup_table("coco-panoptic-133", "coco-panoptic-133-relabeled")
    relabeled_names = get_taxonomy("coco-panoptic-133-relabeled").classes
    base = root / "COCOPanoptic"
    pngs = base / "annotations" / "panoptic_train2017"
    pngs.mkdir(parents=True)
    annotations, images, records_lines = [], [], {}
    for number in range(count):
        rng = np.random.default_rng(10_000 + number)
        stem = coco_stem(number)
        ids = np.zeros(COCO_SIZE, dtype=np.int32)
        segment_ids = rng.choice(np.arange(1, 1 << 24), 16, replace=False)
        ids[COCO_SIZE[0] // 2 :] = int(segment_ids[0])  # a "stuff" floor
        for segment in segment_ids[1:]:
            blobs(rng, ids, 1, np.array([segment]), 60.0)
        present, counts = np.unique(ids, return_counts=True)
        infos = []
        for segment, area in zip(present.tolist(), counts.tolist(), strict=True):
            if segment == 0:
                continue
            ys, xs = np.nonzero(ids == segment)
            bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
            category = int(rng.choice(categories))
            infos.append({"id": segment, "category_id": category, "iscrowd": 0, "bbox": bbox, "area": area})
        rgb = np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)
        if not cv2.imwrite(str(pngs / f"{stem}.png"), rgb[..., ::-1]):
            raise RuntimeError(f"{pngs / stem}.png: cannot write")
        annotations.append({"segments_info": infos, "file_name": f"{stem}.png", "image_id": int(stem)})
        images.append(coco_image_entry(number))
        for index in sorted(rng.choice(len(infos), min(RECORD_LINES, len(infos)), replace=False).tolist()):
            info = infos[index]
            held = int(to_relabeled[to133[info["category_id"]]])
            source = relabeled_names[held]
            target = relabeled_names[(held + 1) % len(relabeled_names)]
            records_lines.setdefault((source, target), []).append(f"{stem}_{info['id']}.png")
    header = {"info": {"description": "synthetic"}, "licenses": [], "images": images}
    train = {**header, "annotations": annotations, "categories": coco_categories()}
    (base / "annotations" / "panoptic_train2017.json").write_text(json.dumps(train))
    val = {"info": {}, "licenses": [], "images": [], "annotations": [], "categories": coco_categories()}
    (base / "annotations" / "panoptic_val2017.json").write_text(json.dumps(val))
    records = root / "records-coco"
    (records / "coco_panoptic").mkdir(parents=True)
    rows = []
    for (source, target), lines in records_lines.items():
        name = "coco_panoptic/" + re.sub(r"[^A-Za-z0-9]+", "-", f"coco_{source}_to_{target}") + ".txt"
        (records / name).write_text("\n".join(lines) + "\n")
        rows.append(f"coco-panoptic-133\ttrain\t{source}\t{target}\t{name}")
    (records / "records.tsv").write_text("dataset\tsplit\tfrom\tto\tfile\n" + "\n".join(rows) + "\n")
    return [f"images/train2017/{coco_stem(n)}.jpg" for n in range(count)], records


def big_coco_json(path: Path, count: int) -> None:
    """A COCO-train-sized panoptic JSON (file order of the real one), written in pieces to bound this process."""
    rng = np.random.default_rng(0)
    categories = np.array([c["id"] for c in coco_categories()])
    with open(path, "w", encoding="utf-8") as handle:
        handle.write('{"info": {"description": "synthetic"}, "licenses": [], "images": [')
        handle.write(", ".join(json.dumps(coco_image_entry(n)) for n in range(count)))
        handle.write('], "annotations": [')
        for start in range(0, count, 5000):
            pieces = []
            for number in range(start, min(count, start + 5000)):
                segments = int(rng.integers(6, 17))  # ~11 on average
                ids = rng.integers(1, 1 << 24, segments)
                cats = rng.choice(categories, segments)
                boxes = rng.integers(0, 400, (segments, 4))
                areas = rng.integers(20, 60000, segments)
                infos = [
                    {"id": int(ids[k]), "category_id": int(cats[k]), "iscrowd": int(k == 0 and number % 20 == 0),
                     "bbox": boxes[k].tolist(), "area": int(areas[k])}
                    for k in range(segments)
                ]  # fmt: skip
                stem = coco_stem(number)
                pieces.append(json.dumps({"segments_info": infos, "file_name": f"{stem}.png", "image_id": int(stem)}))
            handle.write((", " if start else "") + ", ".join(pieces))
        handle.write('], "categories": ' + json.dumps(coco_categories()) + "}")


# ---------------------------------------------------------------------- runs
def check_summary(stdout: str, dataset: str, step: str, images: int) -> None:
    """The run did what was asked: every image processed (not skipped), every record applied."""
    processed = [int(m) for m in re.findall(r"train: (\d+) images, \d+ files written, 0 images already done", stdout)]
    if not processed or any(n != images for n in processed):
        raise RuntimeError(f"{step} {dataset}: unexpected summary:\n{stdout}")
    if step == "relabel":
        applied = sum(int(m) for m in re.findall(r"(\d+) segments relabeled", stdout))
        if applied == 0:
            raise RuntimeError(f"{step} {dataset}: no segment relabeled:\n{stdout}")


def run_dataset(
    root: Path, dataset: str, images: list[str], records: Path, workers: tuple[int, ...], rows: list[list[str]]
) -> None:
    full = root / f"{dataset}-list.txt"
    full.write_text("\n".join(images) + "\n")
    one = root / f"{dataset}-one.txt"
    one.write_text(images[0] + "\n")
    for step in ("prepare", "relabel"):
        extra = ["--records", str(records)] if step == "relabel" else []
        base = [step, dataset, "--root", str(root), *extra]
        t1, peak1 = float("inf"), 0.0
        for _ in range(2):  # the faster of two: start-up varies most on a shared machine
            seconds, peak, out = measure(mseg(*base, "--list", str(one), "--workers", "1"))
            check_summary(out, dataset, step, 1)
            t1, peak1 = min(t1, seconds), max(peak1, peak)
        rows.append([step, dataset, "1", "1", f"{t1:.2f}", "(fixed cost)", "", f"{peak1:.0f}"])
        print(f"  {step} {dataset}: 1 image {t1:.2f} s (start-up and fixed costs)", flush=True)
        for count in workers:
            seconds, peak, out = measure(mseg(*base, "--list", str(full), "--workers", str(count)))
            check_summary(out, dataset, step, len(images))
            net = seconds - t1
            rate = (len(images) - 1) / net if net > 0 else float("nan")
            rows.append(
                [step, dataset, str(count), str(len(images)), f"{seconds:.2f}", f"{rate:.2f}", f"{rate / count:.2f}",
                 f"{peak:.0f}"]
            )  # fmt: skip
            print(f"  {step} {dataset} --workers {count}: {len(images)} images {seconds:.2f} s", flush=True)


def json_part(folder: Path, count: int) -> None:
    path = folder / "panoptic_train2017.json"
    start = time.perf_counter()
    big_coco_json(path, count)
    print(
        f"\nCOCO train JSON, {count} images: synthetic file {path.stat().st_size / 1e6:.0f} MB "
        f"(written in {time.perf_counter() - start:.0f} s); each line a fresh process"
    )
    imports = "import sys, json\nfrom pathlib import Path\nfrom mseg_semantic.dataprep.convert import panoptic_index\n"
    cases = [
        ("imports only (python + mseg_semantic.dataprep.convert)", "pass"),
        ("panoptic_index (streamed)", "print(len(panoptic_index(Path(sys.argv[1]))))"),
        ("json.load", "print(len(json.load(open(sys.argv[1], encoding='utf-8'))['annotations']))"),
    ]
    print(f"{'read':<56} {'seconds':>8} {'peak MB':>8}")
    for label, code in cases:
        seconds, peak, out = measure([sys.executable, "-c", imports + code, str(path)])
        if code != "pass" and out.strip() != str(count):
            raise RuntimeError(f"{label}: expected {count} annotations, got {out.strip()!r}")
        print(f"{label:<56} {seconds:8.2f} {peak:8.0f}", flush=True)


def print_table(rows: list[list[str]]) -> None:
    header = ["step", "dataset", "workers", "images", "seconds", "images/s", "images/s per worker", "peak MB"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = [c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(row)]
        print("  ".join(cells).rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="Cityscapes images (default 200)")
    parser.add_argument("--coco-images", type=int, default=500, help="COCO panoptic images (default 500)")
    parser.add_argument("--coco-json-images", type=int, default=118287, help="images of the big JSON (118287)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts (default: 1 2)")
    parser.add_argument("--skip-cityscapes", action="store_true")
    parser.add_argument("--skip-coco", action="store_true")
    parser.add_argument("--skip-json", action="store_true", help="leave out part 3 (the big COCO JSON)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    args = parser.parse_args()
    if args.images < 2 or args.coco_images < 2:
        parser.error("--images and --coco-images must be at least 2")

    print(machine_line())
    print(load_line() + " (before)")
    print(memory_method())
    folder = Path(tempfile.mkdtemp(prefix="mseg-dataprep-bench-"))
    try:
        rows: list[list[str]] = []
        if not args.skip_cityscapes:
            start = time.perf_counter()
            images, records = cityscapes_tree(folder, args.images)
            took = time.perf_counter() - start
            print(f"\nCityscapes: {len(images)} synthetic 2048x1024 images built in {took:.0f} s")
            run_dataset(folder, "cityscapes", images, records, tuple(args.workers), rows)
        if not args.skip_coco:
            start = time.perf_counter()
            images, records = coco_tree(folder, args.coco_images)
            took = time.perf_counter() - start
            print(f"\nCOCO panoptic: {len(images)} synthetic 640x480 images built in {took:.0f} s")
            run_dataset(folder, "coco-panoptic", images, records, tuple(args.workers), rows)
        if rows:
            print(
                "\nimages/s = (N - 1) / (t_N - t_1): the 1-image run's time (interpreter, imports, lists, records, "
                "JSON) left out.\nrelabel cityscapes writes 2 files per image (19 and 34 classes); every image has "
                f"{RECORD_LINES} record lines.\n"
            )
            print_table(rows)
        if not args.skip_json:
            json_part(folder, args.coco_json_images)
    finally:
        if args.keep:
            print(f"\nkept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print("\n" + load_line() + " (after)")


if __name__ == "__main__":
    main()
