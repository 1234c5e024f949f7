"""Write the shipped relabeling manifest ``mseg_semantic/dataprep/records/records.tsv`` from the dataprep spec.

Run by hand when the spec changes (not needed at install or run time):

    python tools/build_records_manifest.py [--spec ../shared/docs/SPEC-dataprep.md] [--check]
    python tools/build_records_manifest.py --ship ../shared/reference/mseg-api/mseg/relabeled_data

The spec's Appendix A lists the 381 update records of mseg-api's ``dataset_update_records.py`` in application
order (folder, split, file, ``orig -> new``, line count). The manifest has one row per record and relabeled
taxonomy: ``dataset split from to file lines``; the Cityscapes records are applied to two taxonomies, so they
appear twice (once for cityscapes-19, once for cityscapes-34).

``--ship DIR`` copies the record files the manifest names from a copy of mseg-api's ``mseg/relabeled_data`` into
the package, gzip-compressed (``records/<folder>/<file>.gz``), after checking each file's entry count against the
manifest; ``mseg data relabel`` then uses them without ``mseg data download records``.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "mseg_semantic" / "dataprep" / "records" / "records.tsv"
DEFAULT_SPEC = REPO.parent / "shared" / "docs" / "SPEC-dataprep.md"

TASKS = {
    "ade20k_update_records": ("ade20k-150",),
    "bdd_update_records": ("bdd",),
    "cityscapes_update_records": ("cityscapes-19", "cityscapes-34"),
    "cocop_update_records": ("coco-panoptic-133",),
    "idd_update_records": ("idd-39",),
    "mapillary_update_records": ("mapillary-public65",),
    "sunrgbd_update_records": ("sunrgbd-37",),
}


def manifest(spec_text: str) -> str:
    appendix = spec_text[spec_text.index("## Appendix A") :]
    rows = []
    counts = {}
    for section in re.split(r"^#### ", appendix, flags=re.M)[1:]:
        name = re.match(r"`(\w+)` \((\d+) records\)", section)
        if not name:
            raise SystemExit(f"unexpected section heading: {section[:60]!r}")
        records = []
        for line in section.splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) != 5 or cells[0] in ("folder", "---") or set(cells[0]) == {"-"}:
                continue
            folder, split, file, change, lines = cells
            orig, new = (c.strip() for c in change.split("→"))
            records.append((split, orig, new, f"{folder}/{file}", lines))
        if len(records) != int(name.group(2)):
            raise SystemExit(f"{name.group(1)}: {len(records)} rows, heading says {name.group(2)}")
        counts[name.group(1)] = len(records)
        for dataset in TASKS[name.group(1)]:
            rows.extend("\t".join((dataset, *r)) for r in records)
    if sum(counts.values()) != 381:
        raise SystemExit(f"expected 381 records, found {sum(counts.values())}")
    return "dataset\tsplit\tfrom\tto\tfile\tlines\n" + "\n".join(rows) + "\n"


def ship(source: Path) -> int:
    """Copy the manifest's record files from ``source`` into the package, gzip-compressed; returns how many."""
    rows = list(csv.reader(OUT.read_text(encoding="utf-8").splitlines(), delimiter="\t"))[1:]
    files = {row[4]: int(row[5]) for row in rows}
    for name, lines in files.items():
        data = (source / name).read_bytes()
        count = sum(1 for line in data.decode("utf-8").splitlines() if line.strip())
        if count != lines:
            raise SystemExit(f"{source / name}: {count} entries, the manifest says {lines}")
        target = OUT.parent / f"{name}.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
    return len(files)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    parser.add_argument("--check", action="store_true", help="exit 1 when the committed manifest differs")
    parser.add_argument("--ship", type=Path, metavar="DIR", help="copy the record files from DIR into the package")
    args = parser.parse_args()
    if args.ship:
        print(f"shipped {ship(args.ship)} record files into {OUT.parent}")
        return 0
    text = manifest(args.spec.read_text(encoding="utf-8"))
    if args.check:
        if OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} differs from the spec's Appendix A; rerun tools/build_records_manifest.py")
            return 1
        print("records manifest up to date")
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({text.count(chr(10)) - 1} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
