"""``mseg eval``: score a model on a dataset split (zero-shot, oracle, naive, or universal on a training set)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from mseg_semantic import __version__, distributed
from mseg_semantic.cli import add_command_parser
from mseg_semantic.cli.modelargs import ModelSpec, add_config_arguments, add_model_arguments, model_spec
from mseg_semantic.cli.text import notice
from mseg_semantic.data import read_list
from mseg_semantic.errors import InputError
from mseg_semantic.evaluation import evaluate, plan_evaluation, plan_file_evaluation
from mseg_semantic.inference import Segmenter
from mseg_semantic.presets import EVAL_PRESET
from mseg_semantic.taxonomy import get_taxonomy, load_taxonomy_file
from mseg_semantic.taxonomy.files import taxonomy_record


@dataclass(frozen=True)
class EvalSpec:
    """What one ``mseg eval`` run does, read from its arguments once."""

    dataset: str  # the name of the ground truth's taxonomy (a taxonomy file's own name with --dataset-taxonomy)
    taxonomy_file: str | None  # --dataset-taxonomy
    data_root: str
    list: str | None  # None: the original list of the split
    split: str
    out: Path
    name: str  # of the model in the results
    resume: bool
    relabeled: bool
    relabeled_list: str | None
    progress: bool
    model: ModelSpec

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> EvalSpec:
        dataset = _dataset_taxonomy(args)
        model = model_spec(args, default_preset=EVAL_PRESET)
        name = args.name or Path(model.model).stem
        return cls(
            dataset=dataset,
            taxonomy_file=args.dataset_taxonomy,
            data_root=args.data_root,
            list=args.list,
            split=args.split,
            out=Path(args.out) if args.out else Path("mseg_eval") / name / dataset / model.config.name,
            name=name,
            resume=args.resume,
            relabeled=args.relabeled,
            relabeled_list=args.relabeled_list,
            progress=not args.quiet,
            model=model,
        )


def _dataset_taxonomy(args: argparse.Namespace) -> str:
    """The name of the ground truth's taxonomy: ``--dataset``, or the taxonomy file's (checked here, before the model
    loads)."""
    if args.dataset_taxonomy is None:
        return get_taxonomy(args.dataset).name
    if not args.list:
        raise InputError("--dataset-taxonomy needs --list: the 'image label' lines of ground truth in your classes")
    if args.relabeled:
        raise InputError("--relabeled scores MSeg's training datasets; it does not apply to --dataset-taxonomy")
    return load_taxonomy_file(args.dataset_taxonomy).name


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command_parser(
        subparsers,
        "eval",
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
        "  mseg eval --dataset-taxonomy drive.tsv --data-root mine/ --list mine/val.txt   # your own classes\n"
        "  torchrun --nproc-per-node 4 -m mseg_semantic eval --model m.safetensors --dataset ade20k-150 "
        "--data-root /data/mseg_dataset --device cuda\n\n"
        "--data-root is the MSeg data root (holding Camvid/, ADE20K/, ...) or the dataset's own folder. Without "
        "--list the original split list of the dataset is used (shipped with the package).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--dataset", metavar="NAME", help="taxonomy of the ground-truth labels")
    which.add_argument(
        "--dataset-taxonomy",
        metavar="FILE",
        help="ground truth in the classes of a taxonomy file of your own (needs --list); the model must predict the "
        "file's SOURCE, whose probabilities the file sums (see 'mseg taxonomy check')",
    )
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
    add_config_arguments(parser, default=EVAL_PRESET)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Every process checks the arguments (and the device) before joining the others.
    spec = EvalSpec.from_args(args)
    ctx = distributed.init_process(spec.model.device)
    try:
        return _run(spec, ctx)
    finally:
        distributed.close_process(ctx)


def _run(spec: EvalSpec, ctx: distributed.ProcessContext) -> int:
    spec.model.apply_threads()
    entries = read_list(spec.list, spec.data_root, dataset=spec.dataset, split=spec.split)
    config = spec.model.config
    model, model_taxonomy = spec.model.load()
    if spec.taxonomy_file:
        plan = plan_file_evaluation(load_taxonomy_file(spec.taxonomy_file), model_taxonomy)
    else:
        plan = plan_evaluation(spec.dataset, model_taxonomy, relabeled=spec.relabeled)
    relabeled_entries = None
    if plan.relabeled is not None:
        if spec.list and not spec.relabeled_list:
            raise InputError("--relabeled with --list needs --relabeled-list (the relabeled labels of those images)")
        relabeled_entries = read_list(spec.relabeled_list, spec.data_root, dataset=plan.relabeled, split=spec.split)
    output = plan.file_taxonomy or plan.eval_taxonomy
    segmenter = Segmenter(model, config=config, model_taxonomy=model_taxonomy, output_taxonomy=output,
                          device=ctx.device, log=notice if ctx.is_main else None)  # fmt: skip
    del model  # with a low-precision copy the fp32 weights are no longer needed
    if ctx.is_main:
        if line := spec.model.describe_default_model():
            print(line, file=sys.stderr)
        print(
            f"{spec.name} ({model_taxonomy}) on {spec.dataset}: {plan.regime}, scored in {plan.eval_taxonomy}; "
            f"{len(entries)} images; settings {config.name} ({segmenter.backend}, {segmenter.precision}); "
            f"{ctx.world_size} process(es)",
            file=sys.stderr,
        )
    info = {
        "model": spec.name,
        "model_path": spec.model.model,
        "config": dataclasses.asdict(config),
        "list": spec.list or f"{spec.dataset}/{spec.split}",
        "device": str(ctx.device),
        "mseg_semantic_version": __version__,
        **(taxonomy_record(plan.file_taxonomy) if plan.file_taxonomy else {}),
    }
    result = evaluate(segmenter.predict, entries, plan, spec.out, resume=spec.resume,
                      progress=ctx.is_main and spec.progress, info=info,
                      relabeled_entries=relabeled_entries)  # fmt: skip
    if not ctx.is_main:
        return 1 if result.failures else 0
    out = spec.out
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
