"""The ``mseg`` command line: one sub-command per module in this package, imported only when it runs.

Each sub-command module exposes ``register(subparsers)``, which adds its parser (with :func:`add_command_parser`)
and sets ``func`` to the function that runs it. :func:`main` imports the module of the command being run only, so
``mseg taxonomy list`` and ``mseg --help`` do not pay for PyTorch; the other commands appear in the parser as
stubs with their one-line summary from :data:`COMMANDS`. Errors the user can fix
(:class:`~mseg_semantic.errors.MsegError`) and operating-system errors (a full disk, a read-only or foreign
folder: :func:`~mseg_semantic.errors.describe_os_error`) are printed as one line on stderr with exit status 2; there
is no traceback for them, and where the message asks for a keyword argument it names the command's option instead
(:func:`command_line_message`). :class:`Parser` adds a "did you mean" to a misspelled option.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from mseg_semantic import __version__
from mseg_semantic.errors import MsegError, describe_os_error

#: Every sub-command, in the order ``mseg --help`` lists them: its module in this package and its summary.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("demo", "segment images, folders or videos"),
    "eval": ("evaluate", "score a model on a dataset split (mIoU and more)"),
    "results": ("results", "collect evaluation results into a table (rows: models, columns: datasets, harmonic mean)"),
    "train": ("train", "train a segmentation model (MSeg recipe; torchrun for several processes)"),
    "zoo": ("zoo", "list, describe and download the released MSeg models"),
    "data": ("data", "download, prepare, relabel and verify the 13 MSeg datasets"),
    "taxonomy": ("taxonomy", "list taxonomies, show their classes, show the maps between them"),
    "remap": ("remap", "convert a folder of label PNGs from one taxonomy to another"),
    "convert": ("convert", "convert an original .pth checkpoint to a weights-only .safetensors file"),
    "export": ("export", "write a model as an ONNX or OpenVINO file (fp32 or int8) to run without this package"),
    "serve": ("serve", "serve a model over HTTP (JSON API, micro-batching) with a page to segment images in a browser"),
}

#: Environment settings that keep OpenCV's and FFmpeg's warnings about damaged files off stderr (set unless given).
QUIET_DECODERS = {"OPENCV_LOG_LEVEL": "SILENT", "OPENCV_FFMPEG_LOGLEVEL": "-8"}


class Parser(argparse.ArgumentParser):
    """The parser of ``mseg`` and its sub-commands: an unknown option gets the closest known one as a hint
    (``--ouput``: did you mean ``--output``?). argparse suggests only for choices, and only from Python 3.14."""

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> argparse.Namespace:
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}{self._suggestion(extras, parsed)}")
        return parsed

    def _suggestion(self, extras: Sequence[str], parsed: argparse.Namespace) -> str:
        """ "; did you mean --x?" for the first unknown option that is close to an option of the command run."""
        known = option_strings(command_parser(self, parsed))
        for word in extras:
            if word.startswith("--"):
                close = difflib.get_close_matches(word.split("=")[0], known, n=2, cutoff=0.7)
                if close:
                    return f" (did you mean {' or '.join(close)}?)"
        return ""


def command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the sub-command ``args`` ran (``parser`` itself when none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and getattr(args, "command", None) in action.choices:
            return action.choices[args.command]
    return parser


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Every option of ``parser`` and of its sub-commands' parsers (``mseg data download --x``)."""
    options = []
    for action in parser._actions:
        options += action.option_strings
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                options += option_strings(sub)
    return sorted(set(options))


def command_line_message(error: MsegError, parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """The error's message with each keyword argument it asks for replaced by the command's option for it: the
    command's own name for it (``keyword_options``, e.g. ``overwrite`` -> ``--force``), else ``--the-keyword``
    when the command has that option (a keyword without an option stays as it is)."""
    message = str(error)
    options = option_strings(command_parser(parser, args))
    renamed = getattr(args, "keyword_options", {})
    for keyword, text in error.keywords.items():
        option = renamed.get(keyword, "--" + keyword.replace("_", "-"))
        if option in options:
            message = message.replace(text, option)
    return message


def add_command_parser(subparsers: argparse._SubParsersAction, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """The parser of sub-command ``name``, with its summary from :data:`COMMANDS` (for the modules' ``register``)."""
    return subparsers.add_parser(name, help=COMMANDS[name][1], **kwargs)


def build_parser(full: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The top-level parser; the sub-commands in ``full`` (default: all) with all their options, others as stubs."""
    loaded = set(COMMANDS) if full is None else set(full)
    parser = Parser(
        prog="mseg",
        description="MSeg semantic segmentation: taxonomies, models, inference, evaluation and training.",
        epilog="Run 'mseg COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"mseg-semantic {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, summary) in COMMANDS.items():
        if name in loaded:
            importlib.import_module(f"{__name__}.{module}").register(subparsers)
        else:
            subparsers.add_parser(name, help=summary, add_help=False)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The sub-command named in ``argv``: its first word that is not an option (the top level takes no values)."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for name, level in QUIET_DECODERS.items():  # our messages name the bad file; the decoders' chatter is noise
        os.environ.setdefault(name, level)
    parser = build_parser(full=[name for name in (_command(argv),) if name in COMMANDS])
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        # A command group given without its sub-command prints that group's help.
        (getattr(args, "group_parser", None) or parser).print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MsegError as exc:
        print(f"mseg {args.command}: error: {command_line_message(exc, parser, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mseg: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: not an error of ours.
        return 0
    except OSError as exc:  # a full disk, a read-only or foreign folder: the user's to fix, so no traceback
        print(f"mseg {args.command}: error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
