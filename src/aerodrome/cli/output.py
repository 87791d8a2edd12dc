"""One renderer for every command: rich tables for people, `--json` for programs."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from aerodrome.errors import AeroError

JsonFlag = Annotated[bool, typer.Option("--json", "-j", help="Print machine-readable JSON.")]
AppOpt = Annotated[str, typer.Option("--app", "-a", help="App name or id.")]

# Piped output is for scripts and logs: never wrap or truncate it to a guessed width.
console = Console(width=None if sys.stdout.isatty() else 240)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 240)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def visible(text: str) -> str:
    """Control characters (escape sequences, carriage returns, bells) as `\\xNN`: an app's
    output is shown, never interpreted by the terminal. Tabs stay."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def table(
    rows: Sequence[dict[str, Any]],
    columns: Sequence[tuple[str, str]],
    *,
    json_mode: bool,
    empty: str = "nothing to show",
) -> None:
    """`columns` is (key, header) pairs; JSON mode prints the full rows."""
    if json_mode:
        emit_json(list(rows))
        return
    if not rows:
        console.print(empty)
        return
    t = Table(show_edge=False, header_style="bold")
    for _, header in columns:
        t.add_column(header)
    for row in rows:
        t.add_row(*(_cell(row.get(key)) for key, _ in columns))
    console.print(t)


def record(data: dict[str, Any], *, json_mode: bool, title: str | None = None) -> None:
    if json_mode:
        emit_json(data)
        return
    if title:
        console.print(f"[bold]{title}[/bold]")
    width = max((len(k) for k in data), default=0)
    for key, value in data.items():
        console.print(
            f"  {key.replace('_', ' ').upper():<{width}}  {_cell(value)}", highlight=False
        )


def _cell(value: Any) -> str:
    """Values come from the API and may hold `[`: shown literally, never as markup."""
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return escape(", ".join(str(v) for v in value))
    return escape(str(value))


def fail(error: AeroError, *, json_mode: bool = False) -> NoReturn:
    """One line saying what went wrong, one saying what to do; exit status 1."""
    if json_mode:
        emit_json(error.to_dict())
    else:
        err_console.print(
            f"[red]error ({error.code}):[/red] {escape(error.message)}",
            highlight=False,
            soft_wrap=True,
        )
        if error.hint:
            err_console.print(f"  hint: {escape(error.hint)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def confirm(what: str, prompt: str, yes: bool) -> None:
    """Ask before something that cannot be undone; without a terminal, `--yes` is required."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise AeroError(
            f"{what} needs confirmation",
            hint="pass --yes to confirm without a prompt",
            code="confirm",
        )
    typer.confirm(prompt, abort=True)
