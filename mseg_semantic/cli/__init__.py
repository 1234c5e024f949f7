"""The ``mseg`` command line: one sub-command per module in this package.

Each sub-command module exposes ``register(subparsers)``, which adds its parser and sets ``func`` to the
function that runs it. Errors the user can fix (:class:`~mseg_semantic.errors.MsegError`) are printed as one
line on stderr with exit status 2; there is no traceback for them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from mseg_semantic import __version__
from mseg_semantic.cli import convert, data, demo, evaluate, remap, results, taxonomy, train, zoo
from mseg_semantic.errors import MsegError

_COMMANDS = (demo, evaluate, results, train, zoo, data, taxonomy, remap, convert)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every sub-command attached."""
    parser = argparse.ArgumentParser(
        prog="mseg",
        description="MSeg semantic segmentation: taxonomies, models, inference, evaluation and training.",
        epilog="Run 'mseg COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"mseg-semantic {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _COMMANDS:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        # A command group given without its sub-command prints that group's help.
        (getattr(args, "group_parser", None) or parser).print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MsegError as exc:
        print(f"mseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mseg: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: not an error of ours.
        return 0
