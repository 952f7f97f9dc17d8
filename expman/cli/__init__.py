"""The ``expman`` command line: parses, calls the library, renders.

``main()`` turns every error into one line on stderr, ``expman: error: ...``,
and a distinct exit code (docs/cli.md lists them): errors expman raises on
purpose and usage errors alike. Unexpected errors keep their traceback.
``EXPMAN_DEBUG=1`` shows the traceback of every error.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Annotated, NoReturn

import typer

from expman._errors import ExpmanError
from expman.cli._exit import EXIT_USAGE, exit_code_for

__all__ = ["build_app", "main"]

# The commands each module registers; `expman run` and `expman list` build only their
# own (typer inspects every registered command's signature on each invocation).
_MODULES = ("_experiments", "_run", "_inspect", "_compare", "_sweep", "_queue", "_remote")
_ALONE = {"run": "_run", "list": "_inspect", "show": "_inspect", "log": "_inspect"}


def build_app(command: str | None = None) -> typer.Typer:
    """The CLI: every command, or only ``command``'s module when that is enough to run it."""
    app = typer.Typer(
        name="expman",
        help="Experiments as git branches, checkpoints that restore only into the right model.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        # Plain help: rich markup would eat "[params]" and "[run]" as style tags.
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    app.callback()(_root)
    modules = [_ALONE[command]] if command in _ALONE else _MODULES
    for module in modules:
        importlib.import_module(f"expman.cli.{module}").register(app)
    return app


def _show_version(value: bool) -> None:
    if value:
        from expman._version import __version__

        typer.echo(f"expman {__version__}")
        raise typer.Exit()


def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_show_version, help="Show the version and exit."
        ),
    ] = False,
) -> None:
    """Experiments as git branches, checkpoints that restore only into the right model."""


def main(args: Sequence[str] | None = None) -> NoReturn:
    """Entry point of the ``expman`` console script and of ``python -m expman``."""
    if args is not None:  # called from Python (tests): the caller's process goes on
        sys.exit(_main(list(args)))
    code = _main(sys.argv[1:])
    # The process ends now: the interpreter's last garbage collections would walk every
    # object the imports made (typer's and expman's, ~8 ms), all of which die with it.
    gc.freeze()
    sys.exit(code)


def _main(args: list[str]) -> int:
    # typer vendors click and does not re-export its exception base classes;
    # they are reached through typer's vendored module (never `import click`).
    from typer._click.exceptions import ClickException, NoArgsIsHelpError

    try:
        app = build_app(args[0] if args else None)
        result = app(args=args, prog_name="expman", standalone_mode=False)
    except ExpmanError as error:
        return _fail(str(error), exit_code_for(error))
    except NoArgsIsHelpError as error:
        typer.echo(error.format_message())
        return 0
    except ClickException as error:
        message = " ".join(error.format_message().split()).rstrip(".")
        context = getattr(error, "ctx", None)
        command = context.command_path if context is not None else "expman"
        return _fail(f"{message[:1].lower()}{message[1:]}: see {command} --help", EXIT_USAGE)
    except typer.Abort:
        return _fail("aborted: nothing was changed", 1)
    return result if isinstance(result, int) else 0


def _fail(message: str, code: int) -> int:
    if os.environ.get("EXPMAN_DEBUG") == "1":
        traceback.print_exc()
    print(f"expman: error: {message}", file=sys.stderr)
    return code
