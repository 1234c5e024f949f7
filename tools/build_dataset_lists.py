"""Copy the original mseg-api split lists into the package, gzip-compressed (28 MB of text -> about 3 MB).

    python tools/build_dataset_lists.py [--reference ../shared/reference/mseg-api]

Each ``mseg/dataset_lists/<name>/list/<split>.txt`` becomes ``mseg_semantic/data/lists/<name>/<split>.txt.gz``
with the same lines (blank lines and trailing whitespace/CR removed). Deterministic output (no timestamps), so
re-running it changes nothing when the reference did not change.
"""

from __future__ import annotations

import argparse
import gzip
import io
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "mseg_semantic" / "data" / "lists"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, default=REPO.parent / "shared" / "reference" / "mseg-api")
    args = parser.parse_args()
    count = 0
    for path in sorted((args.reference / "mseg" / "dataset_lists").glob("*/list/*.txt")):
        lines = [line.rstrip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        target = OUT / path.parent.parent.name / f"{path.stem}.txt.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0, filename="") as gz:
            gz.write(("\n".join(lines) + "\n").encode("utf-8"))
        target.write_bytes(buffer.getvalue())
        count += 1
    print(f"wrote {count} lists to {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
