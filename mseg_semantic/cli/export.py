"""``mseg export [MODEL] --out FILE``: the network as an ONNX or OpenVINO file that runs without this package.

The command checks everything cheap (the output name and format, an existing file, the preset, the calibration
folder) before it loads the model; :func:`mseg_semantic.inference.deploy.export_model` writes the file.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

from mseg_semantic.cli import add_command_parser
from mseg_semantic.cli.modelargs import ModelSpec, add_checkpoint_arguments
from mseg_semantic.cli.text import print_json
from mseg_semantic.export import FORMATS
from mseg_semantic.precision import FILE_PRECISIONS
from mseg_semantic.presets import DEFAULT_PRESET, preset_for

#: How to run each format, three lines (``x``: the normalised float32 (N, 3, H, W) input); ``{path}`` is the file.
SNIPPETS: dict[str, str] = {
    "onnx": "import onnxruntime as ort\n"
    "session = ort.InferenceSession({path})\n"
    'logits = session.run(None, {{"image": x}})[0]',
    "openvino": "import openvino as ov\n"
    'model = ov.Core().compile_model({path}, "CPU", {{"INFERENCE_PRECISION_HINT": "f32"}})\n'
    "logits = model(x)[0]",
}
#: What a format is called in the summary.
FORMAT_NAMES = {"onnx": "ONNX", "openvino": "OpenVINO IR"}


def _snippet(format: str, path: str) -> str:
    return SNIPPETS[format].format(path=json.dumps(path))


def _input_size(text: str) -> tuple[int, int]:
    """``--input-size HxW``, e.g. 360x480; both sides at least 32 pixels (the network downsamples 32 times)."""
    height, sep, width = text.lower().partition("x")
    if not (sep and height.strip().isdigit() and width.strip().isdigit()):
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH in pixels, e.g. 360x480; got {text!r}")
    size = int(height), int(width)
    if min(size) < 32:
        raise argparse.ArgumentTypeError(f"both sides must be at least 32 pixels; got {text!r}")
    return size


#: What ``mseg export --help`` says the command does.
DESCRIPTION = (
    "Write a model's network as one file for a deployment runtime: ONNX (ONNX Runtime, and most "
    "others) or OpenVINO IR (NAME.xml + NAME.bin). The file computes the logits of normalised RGB images and "
    "carries what a user needs without this package: class names, taxonomy, mean/std, the recommended preset "
    "and its settings, precision, what the output is (ONNX metadata_props / OpenVINO rt_info, keys mseg.*). "
    "Resizing, sliding windows, flips and the taxonomy projection stay outside the file (mseg_semantic's "
    "Segmenter runs them; the preset's settings in the metadata say how). fp32 files give our logits to within "
    "1e-4. int8 files are a quarter of the size, can run faster (CPUs with VNNI or AMX: measure on yours) and "
    "change some labels (calibrated on the windows the preset cuts from --calibrate's images)."
)


def _epilog() -> str:
    """Examples of the command, and how to run the file it writes."""
    return (
        "examples:\n"
        "  mseg export --out camvid11.onnx                       # the bundled CamVid-11 model, dynamic size\n"
        "  mseg export mseg-3m --out mseg-3m.xml                 # OpenVINO IR: mseg-3m.xml + mseg-3m.bin\n"
        "  mseg export mseg-3m --out m.onnx --precision int8 --calibrate street-photos/\n"
        "  mseg export model.safetensors --out m.onnx --input-size 713x713 --low-res\n"
        "  mseg export --out drive.onnx --output-taxonomy drive.tsv    # your own classes, probabilities out\n\n"
        "run the file (x: float32 (N, 3, H, W), RGB 0..255 as (x - mean) / std, mean/std in the metadata):\n"
        + "".join(f"  {line}\n" for line in _snippet("onnx", "camvid11.onnx").splitlines())
        + "\n"
        + "".join(f"  {line}\n" for line in _snippet("openvino", "mseg-3m.xml").splitlines())
        + "\nread the metadata:\n"
        '  session.get_modelmeta().custom_metadata_map["mseg.class_names"]  # ONNX Runtime\n'
        '  ov.Core().read_model("mseg-3m.xml").get_rt_info(["mseg", "class_names"]).astype(str)  # OpenVINO'
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    from mseg_semantic import zoo

    bundled = zoo.get_model_info(zoo.DEFAULT_MODEL)
    parser = add_command_parser(
        subparsers,
        "export",
        description=textwrap.fill(DESCRIPTION, width=100),
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model",
        nargs="?",
        metavar="MODEL",
        help="a model name from 'mseg zoo list' (downloaded and cached on first use) or a checkpoint: a .safetensors "
        "from 'mseg convert' or an original .pth (needs --arch). Default: camvid11-compact, the CamVid-11 model that "
        "ships with the package",
    )
    parser.add_argument(
        "--out", required=True, type=Path, metavar="FILE", help="file to write: NAME.onnx, or NAME.xml for OpenVINO"
    )
    parser.add_argument(
        "--format", choices=list(FORMATS), help="file format (default: from --out's suffix, .onnx or .xml)"
    )
    parser.add_argument(
        "--precision",
        choices=FILE_PRECISIONS,
        default="fp32",
        help="fp32 (default: our logits to within 1e-4) or int8 (static quantization, calibrated; changes some "
        "labels: 95-98%% of the pixels of the demo photos keep their fp32 label with the bundled model)",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--input-size",
        type=_input_size,
        metavar="HxW",
        help="a static file for one input size, e.g. 713x713, batch 1 (some runtimes run it faster)",
    )
    size.add_argument("--dynamic", action="store_true", help="any batch and image size (the default)")
    parser.add_argument(
        "--low-res",
        action="store_true",
        help="output the logits before the network's final resize, at 1/4 of the input size (ceil), as mseg's own "
        "runtime backends do: resize them bilinearly (align_corners=True) to the input, or take the argmax and "
        "upsample the labels. Default: logits at the input size",
    )
    parser.add_argument(
        "--preset",
        metavar="PRESET|FILE.yaml",
        help="the inference preset the file is meant for, recorded in its metadata; with --precision int8 its "
        f"windows are what calibrates (default: the model's own, {bundled.preset} for the bundled model, else "
        f"{DEFAULT_PRESET})",
    )
    parser.add_argument(
        "--calibrate",
        metavar="DIR",
        help="with --precision int8: a folder of images and videos (or one such file) to calibrate on (default: "
        "the examples that ship with the package); use pictures like those the model will see",
    )
    parser.add_argument(
        "--output-taxonomy",
        metavar="T|FILE",
        help="bake an output taxonomy into the file: a taxonomy file of your own over the model's classes (see "
        "'mseg taxonomy check'), or a test taxonomy for a universal model. The file then ends with the softmax and "
        "the fixed linear map, and its output 'probs' holds the summed probabilities of that taxonomy's classes",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace FILE (and NAME.bin) if it exists")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_checkpoint_arguments(parser.add_argument_group("model"))
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mseg_semantic.export import read_metadata, tensor_shapes
    from mseg_semantic.inference.deploy import export_model

    format, spec = _check(args)
    model, _ = spec.load()
    if not args.json:
        what = (
            f"int8, calibrating on {args.calibrate or 'the bundled examples'}" if args.precision == "int8" else "fp32"
        )
        print(f"exporting {spec.model} to {FORMAT_NAMES[format]} ({what})...", file=sys.stderr)
    files = export_model(
        model,
        args.out,
        format=format,
        precision=args.precision,
        input_size=args.input_size,
        low_res=args.low_res,
        preset=args.preset,
        calibration=args.calibrate,
        overwrite=args.overwrite,
        metadata={"model": Path(spec.model).name},
        output_taxonomy=args.output_taxonomy,
    )
    metadata = read_metadata(files[0])
    shapes = tensor_shapes(files[0])
    if args.json:
        _print_json(files, format, args.precision, shapes, metadata)
    else:
        _print_summary(files, format, shapes, metadata)
    return 0


def _check(args: argparse.Namespace) -> tuple[str, ModelSpec]:
    """The export's format and model, after everything cheap is checked: a typo must not wait for a 500 MB
    checkpoint to load (or download)."""
    import torch

    from mseg_semantic import zoo
    from mseg_semantic.errors import InputError
    from mseg_semantic.export import output_files, require_for
    from mseg_semantic.inference.config import load_config
    from mseg_semantic.inference.runtimes import calibration_images
    from mseg_semantic.taxonomy import get_taxonomy, resolve_taxonomy

    format, files = output_files(args.out, args.format, overwrite=args.overwrite)
    _check_writable(files[0].parent)
    require_for(format, args.precision)
    if args.calibrate is not None:
        if args.precision != "int8":
            raise InputError("--calibrate chooses the int8 calibration images: it needs --precision int8")
        calibration_images(args.calibrate)  # the folder exists and holds images
    if args.model_taxonomy:
        get_taxonomy(args.model_taxonomy)
    if args.output_taxonomy:
        resolve_taxonomy(args.output_taxonomy)  # a bad name or file is reported before the model loads
    name = args.model or zoo.DEFAULT_MODEL
    # The spec's preset checks --preset now; export_model applies it, or the model's own (a checkpoint records it).
    spec = ModelSpec(
        model=name,
        arch=args.arch,
        num_classes=args.num_classes,
        model_taxonomy=args.model_taxonomy,
        device=torch.device("cpu"),
        threads=None,
        config=load_config(preset_for(zoo.lookup(name), args.preset)),
        default_model=args.model is None,
    )
    return format, spec


def _check_writable(folder: Path) -> None:
    """Make the output folder and try a file in it, so that an unwritable one is named before the model loads."""
    import tempfile

    folder.mkdir(parents=True, exist_ok=True)  # an OSError here is reported as one line, naming the folder
    with tempfile.TemporaryFile(dir=folder):
        pass


def _print_json(files: list[Path], format: str, precision: str, shapes: dict, metadata: dict[str, str]) -> None:
    print_json(
        {
            "files": [{"path": str(f), "mb": round(f.stat().st_size / 1e6, 2)} for f in files],
            "format": format,
            "precision": precision,
            "input": {"name": "image", "shape": shapes["image"]},
            "output": {"name": _output_name(shapes), "shape": shapes[_output_name(shapes)]},
            "metadata": metadata,
        }
    )


def _output_name(shapes: dict) -> str:
    """``probs`` for a file with an output taxonomy baked in, else ``logits``."""
    return "probs" if "probs" in shapes else "logits"


def _print_summary(files: list[Path], format: str, shapes: dict, metadata: dict[str, str]) -> None:
    def dims(shape: list) -> str:
        return "[" + ", ".join(map(str, shape)) + "]"

    output = _output_name(shapes)
    written = " and ".join(f"{f} ({f.stat().st_size / 1e6:.1f} MB)" for f in files)
    names = json.loads(metadata.get("class_names", "[]"))
    low_res = metadata.get("output_stride") == "4"
    print(f"wrote {written}")
    print(
        f"  {FORMAT_NAMES[format]}, {metadata['precision']}, input size {metadata['input_size']}, "
        f"{'logits' if output == 'logits' else 'probabilities of ' + metadata['taxonomy']} "
        f"{'at 1/4 resolution (--low-res)' if low_res else 'at the input size'}"
    )
    print(
        f"  input  image   float32 {dims(shapes['image'])}: RGB 0..255 as (x - mean) / std, mean {metadata['mean']}, "
        f"std {metadata['std']}"
    )
    print(f"  output {output:7} float32 {dims(shapes[output])}: argmax over axis 1 is the label map")
    preset = json.loads(metadata["preset_settings"])
    short = "fit to the window" if preset["batched"] else f"short side {preset['base_size']}"
    flip = " and their flips" if preset["flip"] else ""
    print(
        f"  metadata (mseg.*): {len(names)} class names of {metadata.get('taxonomy', '?')}, mean/std, precision, "
        f"preset {metadata['preset']} ({short}, scales {preset['scales']}, {preset['crop_h']}x{preset['crop_w']} "
        f"windows{flip})"
    )
    print("run it:")
    for line in _snippet(format, str(files[0])).splitlines():
        print(f"  {line}")
