"""The click classes behind the Typer app: plain help, and `--json` kept for errors of the
command line too.

Typer builds click commands from the functions in app.py; these subclasses change three
things for every command at once, including commands added later:
- `--json` promises one JSON object on stdout whatever happens, so a command line click
  refuses (a typo'd flag, `-k 0`) prints `{"error", "exit_code": 2}` there, not click's usage
  text alone;
- arguments show in help as click writes them (`[PROJECT]...`, `ID`), without Typer's type
  placeholders (`<list[str]>`) and braces (`{ID}`);
- help fills the terminal's width (COLUMNS) instead of stopping at 80 columns.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

# click's exception classes, reached through Typer's public ones (Typer carries its own copy
# of click, which is not to be imported by name).
_UsageError: type[Exception] = typer.BadParameter.__mro__[1]
_ClickException: type[Exception] = typer.BadParameter.__mro__[2]

# Help text is as wide as the terminal, up to this.
MAX_HELP_WIDTH = 160
EXIT_USAGE = 2


class _PlainArgument(TyperArgument):
    """An argument shown as click shows it: `[PROJECT]...` in the usage line, `PROJECT` in the
    list of arguments, no type."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None

    def _usage_display_name(self) -> str:
        name = self.display_name_raw
        name = name if self.required else f"[{name}]"
        return name + ("..." if self.nargs != 1 else "")


def _plain_arguments(command: Any) -> None:
    for param in getattr(command, "params", ()):
        if type(param) is TyperArgument:
            param.__class__ = _PlainArgument
    for sub in getattr(command, "commands", {}).values():
        _plain_arguments(sub)


class ImgsaveGroup(TyperGroup):
    """The `imgsave` group: see the module's docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plain_arguments(self)

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = sys.argv[1:] if args is None else list(args)
        try:
            outcome = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except _UsageError as exc:
            code = getattr(exc, "exit_code", EXIT_USAGE)
            if _asks_for_json(argv):
                _json_usage_error(exc, code)
            else:
                exc.show()  # type: ignore[attr-defined]
        except _ClickException as exc:
            code = getattr(exc, "exit_code", 1)
            exc.show()  # type: ignore[attr-defined]
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            code = 1
        else:
            code = outcome if isinstance(outcome, int) else 0
        if standalone_mode:
            sys.exit(code)
        return code


def _asks_for_json(argv: list[str]) -> bool:
    words = argv[: argv.index("--")] if "--" in argv else argv
    return "--json" in words


def _json_usage_error(exc: Exception, code: int) -> None:
    from imgsave.terminal.consoles import error, print_json

    message = " ".join(exc.format_message().split())  # type: ignore[attr-defined]
    command = getattr(getattr(exc, "ctx", None), "command_path", None)
    if command:
        message = f"{command}: {message}"
    error(message)
    print_json({"error": message, "exit_code": code})


__all__ = ["MAX_HELP_WIDTH", "ImgsaveGroup", "TyperCommand"]
