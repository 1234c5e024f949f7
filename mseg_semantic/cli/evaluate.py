"""``mseg eval``: score a model on a dataset split (zero-shot, oracle, naive, or universal on a training set)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from mseg_semantic import __version__, distributed
from mseg_semantic.cli.modelargs import (
    add_config_arguments,
    add_model_arguments,
    apply_threads,
    config_overrides,
    describe_default_model,
    load_model_from_args,
    resolve_model_args,
)
from mseg_semantic.data import read_list
from mseg_semantic.errors import InputError
from mseg_semantic.evaluation import evaluate, plan_evaluation
from mseg_semantic.inference import Segmenter, load_config
from mseg_semantic.taxonomy import get_taxonomy


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="score a model on a dataset split (mIoU and more)",
        description="Predict every image of a split list with the original test-time algorithm and score the "
        "predictions as the original did (intersections and unions summed over the split, 255 ignored, mIoU over "
        "all classes). A universal model is scored zero-shot on a test dataset in that dataset's taxonomy, or on a "
        "training dataset in the universal taxonomy without the classes that dataset cannot produce; an oracle model "
        "in its own taxonomy; the naive model through its own map. Writes OUT/gray/*.png, OUT/metrics.json, "
        "OUT/results.txt, OUT/report.md, OUT/per_class_iou.png and OUT/confusion_matrix.png.",
        epilog="examples:\n"
        "  mseg eval --dataset camvid-11 --data-root camvid/ --list camvid/val.txt   # the bundled CamVid-11 model\n"
        "  mseg eval --model mseg-3m.safetensors --dataset camvid-11 --data-root /data/mseg_dataset\n"
        "  mseg eval --model camvid.safetensors --dataset camvid-11 --data-root camvid/ --list camvid/val.txt\n"
        "  torchrun --nproc-per-node 4 -m mseg_semantic eval --model m.safetensors --dataset ade20k-150 "
        "--data-root /data/mseg_dataset --device cuda\n\n"
        "--data-root is the MSeg data root (holding Camvid/, ADE20K/, ...) or the dataset's own folder. Without "
        "--list the original split list of the dataset is used (shipped with the package).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", required=True, metavar="NAME", help="taxonomy of the ground-truth labels")
    parser.add_argument("--data-root", required=True, metavar="DIR", help="folder the list's paths are relative to")
    parser.add_argument("--list", metavar="FILE", help="a list of 'image label' lines (default: the original list)")
    parser.add_argument("--split", default="val", help="split of the original lists (default: val)")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: mseg_eval/<model>/<dataset>/<config>)")
    parser.add_argument("--name", help="model name in the results (default: the checkpoint's file name)")
    parser.add_argument("--resume", action="store_true", help="reuse predictions already in OUT/gray")
    parser.add_argument(
        "--relabeled",
        action="store_true",
        help="relabeled evaluation of a universal model on an unrelabeled training dataset, as the "
        "original did for MSeg models: the relabeled ground truth of the same images decides "
        "relabeled pixels",
    )
    parser.add_argument(
        "--relabeled-list",
        metavar="FILE",
        help="with --relabeled and --list: the relabeled list of the same images (same order)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_model_arguments(parser)
    add_config_arguments(parser, default="360_ss")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    distributed.init_from_env()
    try:
        return _run(args)
    finally:
        distributed.shutdown()


def _run(args: argparse.Namespace) -> int:
    get_taxonomy(args.dataset)
    resolve_model_args(args)
    apply_threads(args)
    entries = read_list(args.list, args.data_root, dataset=args.dataset, split=args.split)
    config = load_config(args.config, **config_overrides(args))
    args.device = str(distributed.local_device(args.device))
    model, model_taxonomy = load_model_from_args(args)
    plan = plan_evaluation(args.dataset, model_taxonomy, relabeled=args.relabeled)
    relabeled_entries = None
    if plan.relabeled is not None:
        if args.list and not args.relabeled_list:
            raise InputError("--relabeled with --list needs --relabeled-list (the relabeled labels of those images)")
        relabeled_entries = read_list(args.relabeled_list, args.data_root, dataset=plan.relabeled, split=args.split)
    name = args.name or Path(args.model).stem
    out = Path(args.out) if args.out else Path("mseg_eval") / name / args.dataset / config.name
    segmenter = Segmenter(model, config=config, model_taxonomy=model_taxonomy, output_taxonomy=plan.eval_taxonomy,
                          device=args.device)  # fmt: skip
    del model  # with a low-precision copy the fp32 weights are no longer needed
    main = distributed.is_main()
    if main:
        if line := describe_default_model(args):
            print(line, file=sys.stderr)
        print(
            f"{name} ({model_taxonomy}) on {args.dataset}: {plan.regime}, scored in {plan.eval_taxonomy}; "
            f"{len(entries)} images; settings {config.name}; {distributed.world_size()} process(es)",
            file=sys.stderr,
        )
    info = {
        "model": name,
        "model_path": str(args.model),
        "config": dataclasses.asdict(config),
        "list": args.list or f"{args.dataset}/{args.split}",
        "device": args.device,
        "mseg_semantic_version": __version__,
    }
    result = evaluate(segmenter.predict, entries, plan, out, resume=args.resume, progress=main and not args.quiet,
                      info=info, relabeled_entries=relabeled_entries)  # fmt: skip
    if not main:
        return 1 if result.failures else 0
    if result.failures:
        print(f"{len(result.failures)} sample(s) failed; predictions made so far are kept in {out / 'gray'} "
              f"(re-run with --resume after fixing):", file=sys.stderr)  # fmt: skip
        for failure in result.failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    m = result.metrics
    assert m is not None
    print(f"mIoU {m['mIoU']:.2f} (classes present: {m['mIoU_present_classes']:.2f}), pixel accuracy "
          f"{m['pixel_accuracy']:.2f}; {result.predicted} predicted, {result.reused} reused, "
          f"{result.seconds:.1f} s; results in {out}")  # fmt: skip
    return 0
