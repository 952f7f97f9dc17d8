"""The ``expman`` command line: parses, calls the library, renders.

``main()`` turns every error expman raises on purpose into one line on stderr
and a distinct exit code (docs/cli.md lists them); unexpected errors keep
their traceback. ``EXPMAN_DEBUG=1`` shows the traceback of every error.
"""

from __future__ import annotations

import os
import sys
import traceback

import typer

from expman._errors import ExpmanError
from expman.cli._exit import exit_code_for

__all__ = ["app", "main"]

app = typer.Typer(
    name="expman",
    help="Experiments as git branches, checkpoints that restore only into the right model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    from expman.cli import _compare, _experiments, _inspect, _remote, _run

    _experiments.register(app)
    _run.register(app)
    _inspect.register(app)
    _compare.register(app)
    _remote.register(app)  # push, pull, remote (issue 13)


_register()


def main() -> None:
    """Entry point of the ``expman`` console script."""
    try:
        app()
    except ExpmanError as error:
        code = exit_code_for(error)
        if os.environ.get("EXPMAN_DEBUG") == "1":
            traceback.print_exc()
        print(f"expman: error: {error}", file=sys.stderr)
        sys.exit(code)
