"""Build and check the relabeling records that ship in ``mseg_semantic/dataprep/records/``.

Run by hand when the records change (not needed at install or run time):

    python tools/build_records_manifest.py --ship ../shared/reference/mseg-api/mseg/relabeled_data
    python tools/build_records_manifest.py --check [--spec SPEC] [--records DIR]

The dataprep spec's Appendix A lists the 381 update records of mseg-api's ``dataset_update_records.py`` in
application order (folder, split, file, ``orig -> new``, line count). The manifest ``records.tsv`` has one row per
record and relabeled taxonomy: ``dataset split from to file lines sha256``; the Cityscapes records are applied to two
taxonomies, so they appear twice (once for cityscapes-19, once for cityscapes-34). ``sha256`` is the hash of the
original (uncompressed) file.

``--ship DIR`` writes the manifest from the spec and copies the record files it names from a copy of mseg-api's
``mseg/relabeled_data`` into the package, gzip-compressed (``records/<folder>/<file>.gz``), with their hashes.

``--check`` checks every shipped record file against the manifest (entry count and hash; this is what CI runs, and
the same check ``mseg data relabel`` makes before it reads a record), and, when the spec is at hand, that the
manifest's rows are the spec's. Exit status 1 names each file that differs.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the package of this checkout, for its record reading and checks
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


def hashes(source: Path, text: str) -> dict[str, str]:
    """sha256 of every file the manifest ``text`` names, read from ``source``, after checking its entry count."""
    from mseg_semantic.dataprep.records import read_record_file
    from mseg_semantic.errors import InputError

    rows = list(csv.reader(text.splitlines(), delimiter="\t"))[1:]
    out = {}
    for name, lines in {row[4]: int(row[5]) for row in rows}.items():
        try:  # the package's own reading and count check
            data = read_record_file(source / name, lines=lines, where="the spec").encode("utf-8")
        except InputError as exc:
            raise SystemExit(str(exc)) from None
        out[name] = hashlib.sha256(data).hexdigest()
    return out


def with_hashes(text: str, digests: dict[str, str]) -> str:
    """The manifest ``text`` with a ``sha256`` column from ``digests`` (file -> hash)."""
    lines = text.splitlines()
    body = [f"{line}\t{digests[line.split(chr(9))[4]]}" for line in lines[1:]]
    return "\n".join([f"{lines[0]}\tsha256", *body]) + "\n"


def ship(source: Path, spec_text: str) -> int:
    """Write the manifest and copy its record files from ``source`` into the package, gzip-compressed."""
    text = manifest(spec_text)
    digests = hashes(source, text)
    for name in digests:
        target = OUT.parent / f"{name}.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(gzip.compress((source / name).read_bytes(), compresslevel=9, mtime=0))
    OUT.write_text(with_hashes(text, digests), encoding="utf-8")
    return len(digests)


def check(spec: Path, records: Path, explicit_spec: bool) -> int:
    """0 when the records folder matches its manifest (and the manifest the spec, when the spec is at hand)."""
    from mseg_semantic.dataprep.records import check_records

    problems = check_records(records / "records.tsv", records)
    if spec.is_file():
        shipped = [line.rsplit("\t", 1)[0] for line in (records / "records.tsv").read_text("utf-8").splitlines()]
        if "\n".join(shipped) + "\n" != manifest(spec.read_text(encoding="utf-8")):
            problems.append(f"{records / 'records.tsv'}: rows differ from the spec's Appendix A ({spec})")
    elif explicit_spec:
        problems.append(f"{spec}: no such file")
    else:
        print(f"note: {spec} not found; checked the record files against the manifest only")
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print(f"records in {records}: every file matches records.tsv")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )  # fmt: skip
    parser.add_argument("--spec", type=Path, help=f"the dataprep spec (default: {DEFAULT_SPEC}, when present)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a shipped file or the manifest differs")
    parser.add_argument("--records", type=Path, default=OUT.parent, metavar="DIR", help="the records folder to check")
    parser.add_argument("--ship", type=Path, metavar="DIR", help="copy the record files from DIR into the package")
    args = parser.parse_args()
    spec = args.spec or DEFAULT_SPEC
    if args.check:
        return check(spec, args.records, args.spec is not None)
    if not args.ship:
        parser.error("give --check or --ship DIR")
    if not spec.is_file():
        parser.error(f"{spec}: no such file (give --spec)")
    print(f"shipped {ship(args.ship, spec.read_text(encoding='utf-8'))} record files into {OUT.parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
