"""The ``snnl`` command: one module per subcommand, each with ``add_parser`` and ``run``.

Subcommands that live outside the library register themselves through the entry-point group
``snnl.commands`` (the service's ``snnl serve`` does), so ``snnl`` never imports ``service``.

Building the parser imports no heavy library (``snnl --help`` and every subcommand's ``--help``
answer without torch or numpy): each subcommand module imports what it runs inside ``run``.

``snnl`` without a command prints the help on stderr and exits with status 2. A user error
(``SnnlError``, ``FileNotFoundError``, a bad argument) prints one line on stderr and exits with
status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Any, NoReturn

from snnl.cli.common import HelpFormatter
from snnl.errors import SnnlError

SUBCOMMANDS: tuple[str, ...] = ("train", "export", "score", "evaluate", "index", "data", "monitor")
PLUGIN_GROUP = "snnl.commands"


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line on stderr, exit 2, and shows every
    option's default in its help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser with every subcommand whose module is importable."""
    from snnl import __version__

    parser = _OneLineParser(
        prog="snnl",
        description="Soft Nearest Neighbor Loss: train, export, score, evaluate, serve.",
    )
    parser.add_argument("--version", action="version", version=f"snnl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_OneLineParser)
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"snnl.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"snnl.cli.{name}":
                continue
            raise
        module.add_parser(sub)
    for entry_point in entry_points(group=PLUGIN_GROUP):
        entry_point.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``snnl`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.run(args) or 0)
    except (
        SnnlError,
        FileNotFoundError,
        IsADirectoryError,
        NotADirectoryError,
        PermissionError,
    ) as err:
        print(f"snnl {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"snnl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
