"""How every ``posttrain`` command reports a problem the user can fix: one line ``error: ...`` on stderr, exit
status 2 (1 is kept for "ran, and a gate failed"), no traceback."""

from __future__ import annotations

from typing import NoReturn

import typer


def fail(error: BaseException | str, *, first_line: bool = False) -> NoReturn:
    """Print ``error: <message>`` (only its first line with ``first_line``; the exception's type name when it has
    no message) and exit 2."""
    text = str(error) or type(error).__name__
    typer.echo(f"error: {text.splitlines()[0] if first_line else text}", err=True)
    raise typer.Exit(2)
