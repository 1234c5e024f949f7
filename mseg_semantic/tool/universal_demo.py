"""The original demo command line, kept for people following the MSeg paper's README.

    python -u mseg_semantic/tool/universal_demo.py \
        --config=mseg_semantic/config/test/default_config_360_ms.yaml \
        model_name mseg-3m model_path mseg-3m.pth input_file PATH [key value ...]

``--config`` is a test YAML in the original layout; the trailing ``key value`` pairs override its entries
(each key must exist in the file; values are Python literals, e.g. ``scales [1.0]``). It runs ``mseg demo`` with
those settings on an HRNet-W48 checkpoint with 194 universal classes, writing into ``save_folder`` (default
``temp_files/<model_name>_universal_<ss|ms>/<base_size>``, as the original).
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from mseg_semantic.errors import InputError, MsegError


def parse_legacy_args(argv: Sequence[str]) -> tuple[Path, dict]:
    """``--config=FILE key value ...`` -> (config path, flattened settings with the overrides applied)."""
    parser = argparse.ArgumentParser(
        prog="universal_demo.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="test config YAML (original layout)")
    parser.add_argument("--file_save", default="default", help="unused, accepted for compatibility")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="key value pairs overriding the config")
    args = parser.parse_args(argv)
    path = Path(args.config)
    if not path.is_file():
        raise InputError(f"{path}: config file does not exist")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    flat: dict = {}
    for key, value in data.items():
        flat.update(value if isinstance(value, dict) else {key: value})
    if len(args.opts) % 2:
        raise InputError(f"overrides must be 'key value' pairs, got {args.opts}")
    for key, text in zip(args.opts[::2], args.opts[1::2], strict=True):
        if key not in flat:
            raise InputError(f"unknown config key {key!r} (not in {path.name})")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        old = flat[key]
        if (
            old is not None
            and not isinstance(value, type(old))
            and not (isinstance(old, (list, tuple)) and isinstance(value, (list, tuple)))
        ) and not (isinstance(old, str) and old == "default"):
            raise InputError(f"config key {key!r} expects {type(old).__name__}, got {text!r}")
        flat[key] = value
    return path, flat


def main(argv: Sequence[str] | None = None) -> int:
    from mseg_semantic.cli import main as mseg_main

    try:
        config_path, flat = parse_legacy_args(sys.argv[1:] if argv is None else argv)
    except MsegError as exc:
        print(f"universal_demo.py: error: {exc}", file=sys.stderr)
        return 2
    for key in ("model_path", "input_file"):
        if flat.get(key) in (None, "default"):
            print(f"universal_demo.py: error: '{key} PATH' is required", file=sys.stderr)
            return 2
    scales = list(flat.get("scales") or [1.0])
    mode = "ss" if len(scales) == 1 else "ms"
    save = flat.get("save_folder")
    if save in (None, "default"):
        save = f"temp_files/{flat.get('model_name', 'model')}_universal_{mode}/{flat.get('base_size')}"
    argv_new = [
        "demo", str(flat["input_file"]), "--model", str(flat["model_path"]), "--out", str(save),
        "--config", str(config_path), "--scales", *[str(s) for s in scales],
    ]  # fmt: skip
    arch = flat.get("arch", "hrnet")
    if str(flat["model_path"]).endswith((".pth", ".pt", ".tar")):
        argv_new += ["--arch", {"hrnet": "hrnet_w48", "psp": "pspnet50"}.get(arch, arch)]
    if flat.get("base_size"):
        argv_new += ["--base-size", str(flat["base_size"])]
    if flat.get("test_h"):
        argv_new += ["--crop-size", str(flat["test_h"])]
    return mseg_main(argv_new)


if __name__ == "__main__":
    raise SystemExit(main())
