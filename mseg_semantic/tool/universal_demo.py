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
from dataclasses import fields
from pathlib import Path

from mseg_semantic.configs import field_type, read_config, read_yaml, strip_optional
from mseg_semantic.errors import InputError, MsegError
from mseg_semantic.inference.config import InferenceConfig, OriginalTestConfig, flatten_sections


def parse_legacy_args(argv: Sequence[str]) -> tuple[Path, OriginalTestConfig]:
    """``--config=FILE key value ...`` -> (config path, the file's settings with the overrides applied)."""
    parser = argparse.ArgumentParser(
        prog="universal_demo.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="test config YAML (original layout)")
    parser.add_argument("--file_save", default="default", help="unused, accepted for compatibility")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="key value pairs overriding the config")
    args = parser.parse_args(argv)
    path = Path(args.config)
    flat = flatten_sections(read_yaml(path) or {}, str(path))
    if len(args.opts) % 2:
        raise InputError(f"overrides must be 'key value' pairs, got {args.opts}")
    for key, text in zip(args.opts[::2], args.opts[1::2], strict=True):
        if strip_optional(field_type(OriginalTestConfig, key, source="command line")) is str:
            flat[key] = text  # a path or a name, even if it looks like a number
            continue
        try:
            flat[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            flat[key] = text
    origins = dict.fromkeys(args.opts[::2], "command line")
    ours = {f.name for f in fields(InferenceConfig)} - {f.name for f in fields(OriginalTestConfig)} | {"fast"}
    # Keys of our layout are accepted (the demo reads the file too); those of the original are typed.
    return path, read_config(OriginalTestConfig, flat, source=str(path), origins=origins, ignore=ours)


def main(argv: Sequence[str] | None = None) -> int:
    from mseg_semantic.cli import main as mseg_main

    try:
        config_path, cfg = parse_legacy_args(sys.argv[1:] if argv is None else argv)
    except MsegError as exc:
        print(f"universal_demo.py: error: {exc}", file=sys.stderr)
        return 2
    for key in ("model_path", "input_file"):
        if getattr(cfg, key) in (None, "default"):
            print(f"universal_demo.py: error: '{key} PATH' is required", file=sys.stderr)
            return 2
    scales = list(cfg.scales or [1.0])
    mode = "ss" if len(scales) == 1 else "ms"
    save = cfg.save_folder
    if save in (None, "default"):
        save = f"temp_files/{cfg.model_name}_universal_{mode}/{cfg.base_size}"
    argv_new = [
        "demo", cfg.input_file, "--model", cfg.model_path, "--out", save,
        "--config", str(config_path), "--scales", *[str(s) for s in scales],
    ]  # fmt: skip
    if cfg.model_path.endswith((".pth", ".pt", ".tar")):
        arch = cfg.arch or "hrnet"
        argv_new += ["--arch", {"hrnet": "hrnet_w48", "psp": "pspnet50"}.get(arch, arch)]
    if cfg.base_size:
        argv_new += ["--base-size", str(cfg.base_size)]
    if cfg.test_h:
        argv_new += ["--crop-size", str(cfg.test_h)]
    return mseg_main(argv_new)


if __name__ == "__main__":
    raise SystemExit(main())
