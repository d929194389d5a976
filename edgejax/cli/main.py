"""The ``edgejax`` command: one subcommand per module (``run``, ``sweep``, ``table``, ``plot``)."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from edgejax.cli import plot as plot_command
from edgejax.cli import run as run_command
from edgejax.cli import sweep as sweep_command
from edgejax.cli import table as table_command

COMMANDS = {"run": run_command, "sweep": sweep_command, "table": table_command, "plot": plot_command}


def parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    top = argparse.ArgumentParser(prog="edgejax", description="Vectorized JAX simulation of edge collaborative training.")
    sub = top.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add_parser(sub)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse, dispatch to the subcommand's ``execute``; bad input exits 2 with a
    message, a multi-host run whose processes did not join in time exits 1."""
    args = vars(parser().parse_args(argv))
    try:
        return COMMANDS[args["command"]].execute(args)
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"edgejax: error: {err}", file=sys.stderr)
        return 2
    except TimeoutError as err:
        print(f"edgejax: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
