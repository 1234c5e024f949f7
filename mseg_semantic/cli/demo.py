"""``mseg demo``: segment images, folders and videos and write label maps, colour maps and overlays."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mseg_semantic.cli.modelargs import (
    add_config_arguments,
    add_model_arguments,
    apply_threads,
    config_overrides,
    describe_default_model,
    load_model_from_args,
    resolve_model_args,
)
from mseg_semantic.errors import InputError
from mseg_semantic.examples import EXAMPLES, example_path
from mseg_semantic.inference import Segmenter, collect_inputs, load_config, run_demo
from mseg_semantic.inference.demo import prepare_output_dir
from mseg_semantic.taxonomy import get_taxonomy


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="segment images, folders or videos",
        description="Segment images, folders of images (searched recursively) and videos with the original MSeg "
        "test-time algorithm. For each image NAME.ext it writes NAME_gray.png (label ids), NAME_color.png (colour "
        "map) and NAME_overlay.jpg (colour map blended into the image, with class names); for a video "
        "NAME_overlay.mp4 (and with --save-frames the per-frame label maps). Existing outputs are skipped unless "
        "--overwrite, so an interrupted run resumes. Unreadable inputs are reported and skipped; the exit status "
        "is then 1.",
        epilog="examples:\n"
        "  mseg demo --example                    # the bundled dashcam photo with the bundled CamVid-11 model\n"
        "  mseg demo --example freeway --fast     # the bundled dashcam clip\n"
        "  mseg demo street.jpg --model mseg-3m   # the MSeg universal model (downloaded once)\n"
        "  mseg demo street.jpg --model mseg-3m.pth --arch hrnet_w48\n"
        "  mseg demo photos/ clip.mp4 --model mseg-3m.safetensors --config 360_ss --taxonomy cityscapes-19 "
        "--out results/\n\n"
        "Label maps are in the output taxonomy (--taxonomy; default: the model's own). A universal model can also "
        "output any test taxonomy: camvid-11, kitti-19, pascal-context-60, scannet-20, voc2012, wilddash-19.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="*", metavar="INPUT", help="image files, folders or videos")
    parser.add_argument(
        "--example",
        nargs="?",
        const="dashcam",
        choices=sorted(EXAMPLES),
        help="also segment an example that ships with the package: dashcam (a photo, the default) or freeway "
        "(a 38-frame clip); MIT-licensed, see mseg_semantic/assets/examples/ATTRIBUTION.md",
    )
    parser.add_argument("--out", default="mseg_demo", metavar="DIR", help="output folder (default: ./mseg_demo)")
    parser.add_argument("--taxonomy", metavar="T", help="taxonomy of the outputs (default: the model's)")
    parser.add_argument("--overwrite", action="store_true", help="recompute outputs that already exist")
    parser.add_argument("--save-frames", action="store_true", help="videos: also write each frame's label map")
    parser.add_argument("--max-frames", type=int, metavar="N", help="videos: stop after N frames")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_arguments(parser)
    add_config_arguments(parser, default="360_ms", zoo_preset=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.example:
        args.inputs = [*args.inputs, str(example_path(args.example))]
    if not args.inputs:
        raise InputError("nothing to segment: give image files, folders or videos, or --example")
    # Cheap checks first, so that a typo does not wait for a 500 MB checkpoint to load.
    resolve_model_args(args)
    apply_threads(args)
    collect_inputs(args.inputs, Path(args.out))
    prepare_output_dir(Path(args.out))
    load_config(args.config, **config_overrides(args))
    if args.taxonomy:
        get_taxonomy(args.taxonomy)
    model, model_taxonomy = load_model_from_args(args)
    segmenter = Segmenter(
        model,
        config=args.config,
        model_taxonomy=model_taxonomy,
        output_taxonomy=args.taxonomy,
        device=args.device,
        **config_overrides(args),
    )
    del model  # with a low-precision copy (--fast) the fp32 weights are no longer needed
    described = describe_default_model(args) or (
        f"model: {args.model} ({model_taxonomy}, {segmenter.num_classes} output classes in "
        f"{segmenter.output_taxonomy})"
    )
    print(f"{described}; settings: {segmenter.config.name}, {segmenter.precision}", file=sys.stderr)
    report = run_demo(
        segmenter,
        args.inputs,
        args.out,
        overwrite=args.overwrite,
        save_frames=args.save_frames,
        max_frames=args.max_frames,
        progress=not args.quiet,
        log=lambda m: print(m, file=sys.stderr),
    )
    done = report.images + (1 if report.frames else 0)
    per_image = f", {report.seconds / max(1, report.images + report.frames):.2f} s per image/frame" if done else ""
    print(
        f"{report.images} image(s) and {report.frames} video frame(s) segmented in {report.seconds:.1f} s"
        f"{per_image}; {report.skipped} already done; outputs in {args.out}"
    )
    if report.failures:
        print(f"{len(report.failures)} input(s) failed:", file=sys.stderr)
        for failure in report.failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    return 0
