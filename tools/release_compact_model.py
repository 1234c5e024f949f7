"""Package a finished ``mseg train camvid11`` run as the bundled default model (``camvid11-compact``).

Reads RUN/model.safetensors (the final export), RUN/config.yaml (the resolved recipe) and the ``mseg eval`` result
folder(s) given with --metrics, and writes mseg_semantic/assets/models/camvid11-compact.safetensors with the
weights in fp32 and metadata that make the file self-describing: arch and HRNet config (written by
save_checkpoint), taxonomy, the training recipe as YAML, the command that trained it, and the measured metrics.
A run that fine-tuned other weights (``model.weights`` in its recipe, e.g. ``camvid11-robust``) also records the
recipe, command and metrics of those weights (``init_training_recipe``, ``init_training_command``,
``init_metrics``), so the file says how to train both stages.

    python tools/release_compact_model.py runs/camvid11 --metrics mseg_eval/camvid11-val/metrics.json \\
        --command "torchrun --standalone --nproc-per-node 2 -m mseg_semantic train camvid11 ..."
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from mseg_semantic.models import read_metadata, save_checkpoint
from mseg_semantic.zoo import load_model

TARGET = Path(__file__).resolve().parents[1] / "mseg_semantic" / "assets" / "models" / "camvid11-compact.safetensors"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the training output folder")
    parser.add_argument("--metrics", type=Path, nargs="+", required=True, help="metrics.json files from mseg eval")
    parser.add_argument("--command", required=True, help="the training command line, for the record")
    parser.add_argument(
        "--init-weights-as",
        metavar="PATH",
        help="record the starting weights (model.weights) under this path, e.g. the documented "
        "runs/camvid11/model.safetensors when the run read a copy elsewhere; the two files must be identical",
    )
    parser.add_argument("--out", type=Path, default=TARGET)
    args = parser.parse_args()

    model_file = args.run / "model.safetensors"
    model = load_model(model_file)
    saved = read_metadata(model_file)
    metrics = {}
    for path in args.metrics:
        data = json.loads(path.read_text())
        key = f"{data['dataset']} {Path(data['list']).stem} ({data['config']['name']})"
        metrics[key] = {
            "mIoU": round(data["mIoU"], 2),
            "pixel_accuracy": round(data["pixel_accuracy"], 2),
            "per_class_iou": {k: None if v is None else round(v, 2) for k, v in data["per_class_iou"].items()},
        }
    recipe = (args.run / "config.yaml").read_text()
    stages = {}
    init = (yaml.safe_load(recipe).get("model") or {}).get("weights")
    if init and args.init_weights_as:
        if Path(args.init_weights_as).read_bytes() != Path(init).read_bytes():
            parser.error(f"--init-weights-as: {args.init_weights_as} is not the same file as {init}")
        # model.weights only: the "  weights:" line of the model section, not "  backbone_weights:".
        recipe = recipe.replace(f"\n  weights: {init}\n", f"\n  weights: {args.init_weights_as}\n", 1)
    if init:  # stage 2 of a fine-tune: keep what made its starting point
        first = read_metadata(Path(init))
        stages = {f"init_{key}": first.get(key, "") for key in ("training_recipe", "training_command", "metrics")}
    out = save_checkpoint(
        model,
        args.out,
        taxonomy=saved["taxonomy"],
        zoo_name="camvid11-compact",
        trained_iters=saved.get("current_iter", ""),
        training_recipe=recipe,
        training_command=args.command,
        metrics=metrics,
        **stages,
    )
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): {json.dumps(metrics)}")


if __name__ == "__main__":
    main()
