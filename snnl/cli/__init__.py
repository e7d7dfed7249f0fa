"""The ``snnl`` command: one module per subcommand, each with ``add_parser`` and ``run``.

Subcommands that live outside the library register themselves through the entry-point group
``snnl.commands`` (the service's ``snnl serve`` does), so ``snnl`` never imports ``service``.

A user error (``SnnlError``, ``FileNotFoundError``, a bad argument) prints one line on stderr
and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import NoReturn

from snnl.errors import SnnlError

SUBCOMMANDS: tuple[str, ...] = ("train", "export", "score", "evaluate", "index", "data")
PLUGIN_GROUP = "snnl.commands"


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line on stderr, exit 2."""

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
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
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
