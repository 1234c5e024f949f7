"""``mseg demo``: segment images, folders and videos and write label maps, colour maps and overlays."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from mseg_semantic.cli import add_command_parser
from mseg_semantic.cli.modelargs import ModelSpec, add_config_arguments, add_model_arguments, model_spec
from mseg_semantic.cli.text import notice
from mseg_semantic.errors import InputError
from mseg_semantic.examples import EXAMPLES, example_path
from mseg_semantic.inference import Segmenter, collect_inputs, run_demo
from mseg_semantic.inference.demo import prepare_output_dir
from mseg_semantic.taxonomy import get_taxonomy

#: The inference preset of a checkpoint that is not a zoo model (a zoo model brings its own).
DEFAULT_PRESET = "360_ms"


@dataclass(frozen=True)
class DemoSpec:
    """What one ``mseg demo`` run does, read from its arguments once."""

    inputs: tuple[str, ...]  # the files and folders given, then the --example
    out: str
    output_taxonomy: str | None  # None: the model's
    overwrite: bool
    save_frames: bool
    max_frames: int | None
    progress: bool
    model: ModelSpec

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DemoSpec:
        inputs = (*args.inputs, *([str(example_path(args.example))] if args.example else []))
        if not inputs:
            raise InputError("nothing to segment: give image files, folders or videos, or --example")
        if args.output_taxonomy:
            get_taxonomy(args.output_taxonomy)
        return cls(
            inputs=inputs,
            out=args.out,
            output_taxonomy=args.output_taxonomy,
            overwrite=args.overwrite,
            save_frames=args.save_frames,
            max_frames=args.max_frames,
            progress=not args.quiet,
            model=model_spec(args, default_preset=DEFAULT_PRESET, zoo_preset=True),
        )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_command_parser(
        subparsers,
        "demo",
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
        "  mseg demo photos/ clip.mp4 --model mseg-3m.safetensors --preset 360_ss --output-taxonomy cityscapes-19 "
        "--out results/\n\n"
        "Label maps are in the output taxonomy (--output-taxonomy; default: the model's own). A universal model can "
        "also output any test taxonomy: camvid-11, kitti-19, pascal-context-60, scannet-20, voc2012, wilddash-19.",
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
    parser.add_argument(
        "--output-taxonomy",
        "--taxonomy",
        dest="output_taxonomy",
        metavar="T",
        help="taxonomy of the label maps (default: the model's); --taxonomy is an alias",
    )
    parser.add_argument("--overwrite", action="store_true", help="recompute outputs that already exist")
    parser.add_argument("--save-frames", action="store_true", help="videos: also write each frame's label map")
    parser.add_argument("--max-frames", type=int, metavar="N", help="videos: stop after N frames")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_model_arguments(parser)
    add_config_arguments(parser, default=DEFAULT_PRESET, zoo_preset=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # The spec checks the cheap things first, so that a typo does not wait for a 500 MB checkpoint to load.
    spec = DemoSpec.from_args(args)
    spec.model.apply_threads()
    collect_inputs(spec.inputs, Path(spec.out))
    prepare_output_dir(Path(spec.out))
    model, model_taxonomy = spec.model.load()
    segmenter = Segmenter(
        model,
        config=spec.model.config,
        model_taxonomy=model_taxonomy,
        output_taxonomy=spec.output_taxonomy,
        device=spec.model.device,
        log=notice,
    )
    del model  # with a low-precision copy (--fast) the fp32 weights are no longer needed
    described = spec.model.describe_default_model() or (
        f"model: {spec.model.model} ({model_taxonomy}, {segmenter.num_classes} output classes in "
        f"{segmenter.output_taxonomy})"
    )
    print(f"{described}; settings: {segmenter.config.name}, {segmenter.backend} {segmenter.precision}", file=sys.stderr)
    report = run_demo(
        segmenter,
        spec.inputs,
        spec.out,
        overwrite=spec.overwrite,
        save_frames=spec.save_frames,
        max_frames=spec.max_frames,
        progress=spec.progress,
        log=lambda m: print(m, file=sys.stderr),
    )
    done = report.images + (1 if report.frames else 0)
    per_image = f", {report.seconds / max(1, report.images + report.frames):.2f} s per image/frame" if done else ""
    print(
        f"{report.images} image(s) and {report.frames} video frame(s) segmented in {report.seconds:.1f} s"
        f"{per_image}; {report.skipped} already done; outputs in {spec.out}"
    )
    if report.failures:
        print(f"{len(report.failures)} input(s) failed:", file=sys.stderr)
        for failure in report.failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    return 0
