"""``mseg demo``: segment images, folders and videos and write label maps, colour maps, overlays, confidence maps
and probabilities; under ``torchrun`` the inputs are split over the processes."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from mseg_semantic import distributed
from mseg_semantic.cli import add_command_parser
from mseg_semantic.cli.modelargs import ModelSpec, add_config_arguments, add_model_arguments, model_spec
from mseg_semantic.cli.text import notice
from mseg_semantic.errors import InputError
from mseg_semantic.examples import EXAMPLES, example_path
from mseg_semantic.inference import Segmenter, collect_inputs
from mseg_semantic.inference.demo import (
    DEFAULT_OUTPUTS,
    OUTPUT_SUFFIXES,
    DemoJob,
    DemoOptions,
    check_outputs,
    prepare_output_dir,
    run_job,
)
from mseg_semantic.presets import DEFAULT_PRESET
from mseg_semantic.taxonomy import resolve_taxonomy

#: How long the processes of a torchrun run wait for each other at the end.
PROCESS_GROUP_TIMEOUT = timedelta(days=7)
#: Output-writing threads per process on a GPU (--io-workers).
GPU_IO_WORKERS = 4


@dataclass(frozen=True)
class DemoSpec:
    """What one ``mseg demo`` run does, read from its arguments once."""

    inputs: tuple[str, ...]  # the files and folders given, then the --example
    inputs_from: tuple[str, ...]  # list files
    outputs: tuple[str, ...]
    probs_topk: int | None
    out: str
    output_taxonomy: str | None  # None: the model's
    overwrite: bool
    save_frames: bool
    max_frames: int | None
    progress: bool
    io_workers: int | None  # None: 1 on a CPU (the model uses its cores), GPU_IO_WORKERS on a GPU
    model: ModelSpec

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DemoSpec:
        inputs = (*args.inputs, *([str(example_path(args.example))] if args.example else []))
        if not inputs and not args.inputs_from:
            raise InputError("nothing to segment: give image files, folders or videos, --inputs-from or --example")
        outputs = check_outputs(args.outputs, args.probs_topk)
        if args.probs_topk is not None and args.probs_topk < 1:
            raise InputError(f"--probs-topk must be at least 1, got {args.probs_topk}")
        if args.output_taxonomy:
            resolve_taxonomy(args.output_taxonomy)  # a bad name or file is reported before the model loads
        if args.io_workers is not None and args.io_workers < 1:
            raise InputError(f"--io-workers must be at least 1, got {args.io_workers}")
        return cls(
            inputs=inputs,
            inputs_from=tuple(args.inputs_from or ()),
            outputs=outputs,
            probs_topk=args.probs_topk,
            out=args.out,
            output_taxonomy=args.output_taxonomy,
            overwrite=args.overwrite,
            save_frames=args.save_frames,
            max_frames=args.max_frames,
            progress=not args.quiet,
            io_workers=args.io_workers,
            model=model_spec(args, default_preset=DEFAULT_PRESET, zoo_preset=True),
        )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command_parser(
        subparsers,
        "demo",
        description="Segment images, folders of images (searched recursively), lists of files and videos with the "
        "original MSeg test-time algorithm. For each image NAME.ext it writes (--outputs) NAME_gray.png (label ids), "
        "NAME_color.png (colour map) and NAME_overlay.jpg (colour map blended into the image, with class names), "
        "and on request NAME_confidence.png (16-bit: round(p * 65535) of each pixel's label probability) and "
        "NAME_probs.npz (float16 probabilities, or the top K with --probs-topk); for a video NAME_overlay.mp4 (and "
        "with --save-frames the per-frame label and confidence maps). OUT/manifest.jsonl gets a line per input "
        "(outputs, size, seconds, class histogram, error). Inputs whose manifest line says done and whose outputs "
        "exist are skipped unless --overwrite, so an interrupted run resumes. Unreadable inputs are reported and "
        "skipped; the exit status is then 1. Under torchrun the inputs are split over the processes.",
        epilog="examples:\n"
        "  mseg demo --example                    # the bundled dashcam photo with the bundled CamVid-11 model\n"
        "  mseg demo --example freeway --fast     # the bundled dashcam clip\n"
        "  mseg demo street.jpg --model mseg-3m   # the MSeg universal model (downloaded once)\n"
        "  mseg demo street.jpg --model mseg-3m.pth --arch hrnet_w48\n"
        "  mseg demo photos/ clip.mp4 --model mseg-3m.safetensors --preset 360_ss --output-taxonomy wilddash-19 "
        "--out results/\n"
        "  mseg demo --inputs-from files.txt --outputs gray,confidence --out results/\n"
        "  torchrun --nproc-per-node 4 -m mseg_semantic demo photos/ --model mseg-3m --device cuda --out results/\n\n"
        "Label maps are in the output taxonomy (--output-taxonomy; default: the model's own). A universal model can "
        "also output any test taxonomy: camvid-11, kitti-19, pascal-context-60, scannet-20, voc2012, wilddash-19.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="image files, folders or videos")
    parser.add_argument(
        "--inputs-from",
        action="append",
        metavar="FILE",
        help="a file listing images and videos, one path per line (blank lines and # comments skipped; relative "
        "paths from the current folder); outputs mirror the folders below the one the files share; repeatable",
    )
    parser.add_argument(
        "--outputs",
        default=",".join(DEFAULT_OUTPUTS),
        metavar="LIST",
        help=f"what to write per image, comma-separated: {','.join(OUTPUT_SUFFIXES)} (default: "
        f"{','.join(DEFAULT_OUTPUTS)}); a video always gets its overlay video",
    )
    parser.add_argument(
        "--probs-topk",
        type=int,
        metavar="K",
        help="with probs: keep the K most likely classes per pixel (ids and float16 probabilities) instead of all",
    )
    parser.add_argument(
        "--example",
        nargs="?",
        const="dashcam",
        choices=sorted(EXAMPLES),
        help="also segment an example that ships with the package: dashcam (a photo, the default) or freeway "
        "(a 38-frame clip); MIT-licensed, see mseg_semantic/assets/examples/ATTRIBUTION.md",
    )
    parser.add_argument("--out", default="mseg_demo", metavar="DIR", help="output folder (default: ./mseg_demo)")
    parser.add_argument(
        "--output-taxonomy",
        "--taxonomy",
        dest="output_taxonomy",
        metavar="T",
        help="taxonomy of the label maps (default: the model's), or a taxonomy file of your own whose rows sum the "
        "model's classes (see 'mseg taxonomy check'); --taxonomy is an alias",
    )
    parser.add_argument("--overwrite", action="store_true", help="recompute outputs that already exist")
    parser.add_argument("--save-frames", action="store_true", help="videos: also write each frame's label map")
    parser.add_argument("--max-frames", type=int, metavar="N", help="videos: stop after N frames")
    parser.add_argument(
        "--io-workers",
        type=int,
        metavar="N",
        help="threads per process that encode and write the outputs while the model runs (default: 1 on a CPU, "
        f"whose cores the model uses; {GPU_IO_WORKERS} on a GPU, where colour maps and overlays of large images "
        "take longer than the forward pass)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_arguments(parser)
    add_config_arguments(parser, default=DEFAULT_PRESET, zoo_preset=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # The spec checks the cheap things first, so that a typo does not wait for a 500 MB checkpoint to load.
    spec = DemoSpec.from_args(args)
    spec.model.apply_threads()
    # The inputs and the output folder are checked once, here, before the model loads.
    out = Path(spec.out)
    job = DemoJob(out, tuple(collect_inputs(spec.inputs, out, spec.inputs_from)), spec.outputs, spec.probs_topk)
    prepare_output_dir(out)
    # The processes meet after their last input: one may wait hours for another (a long video, a slower GPU).
    ctx = distributed.init_process(spec.model.device, timeout=PROCESS_GROUP_TIMEOUT)
    try:
        return _run(spec, job, ctx)
    finally:
        distributed.close_process(ctx)


def _run(spec: DemoSpec, job: DemoJob, ctx: distributed.ProcessContext) -> int:
    model, model_taxonomy = spec.model.load()
    segmenter = Segmenter(
        model,
        config=spec.model.config,
        model_taxonomy=model_taxonomy,
        output_taxonomy=spec.output_taxonomy,
        device=ctx.device,
        log=notice if ctx.is_main else None,
    )
    del model  # with a low-precision copy (--fast) the fp32 weights are no longer needed
    if spec.probs_topk is not None and spec.probs_topk > segmenter.num_classes:
        raise InputError(
            f"--probs-topk {spec.probs_topk}: {segmenter.output_taxonomy} has only {segmenter.num_classes} classes"
        )
    if ctx.is_main:
        described = spec.model.describe_default_model() or (
            f"model: {spec.model.model} ({model_taxonomy}, {segmenter.num_classes} output classes in "
            f"{segmenter.output_taxonomy})"
        )
        processes = f"; {ctx.world_size} processes" if ctx.distributed else ""
        print(f"{described}; settings: {segmenter.config.name}, {segmenter.backend} {segmenter.precision}{processes}",
              file=sys.stderr)  # fmt: skip
    options = DemoOptions(
        overwrite=spec.overwrite,
        save_frames=spec.save_frames,
        max_frames=spec.max_frames,
        progress=spec.progress,
        io_workers=spec.io_workers or (GPU_IO_WORKERS if ctx.device.type == "cuda" else 1),
    )
    report = run_job(segmenter, job, options, log=lambda m: print(m, file=sys.stderr))
    if not ctx.is_main:
        return 1 if report.failures else 0
    count = report.images + report.frames
    pace = [f"{count / report.seconds:.2f} images/s"] if count and report.seconds > 0 else []
    pace.append(f"{report.processes} process(es)")
    print(
        f"{report.images} image(s) and {report.frames} video frame(s) segmented in {report.seconds:.1f} s "
        f"({', '.join(pace)}); {report.skipped} already done; {len(report.failures)} failed; outputs in {spec.out}"
    )
    if report.failures:
        print(f"{len(report.failures)} input(s) failed (see {Path(spec.out) / 'manifest.jsonl'}):", file=sys.stderr)
        for failure in report.failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    return 0
