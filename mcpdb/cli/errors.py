"""One readable line and a non-zero exit for every user mistake, never a traceback."""

from __future__ import annotations

import sys
from typing import NoReturn

from rich.console import Console
from rich.markup import escape

stderr = Console(stderr=True, highlight=False, soft_wrap=True)


class CliError(Exception):
    """A mistake or failure to report as one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = 1) -> NoReturn:
    stderr.print(f"[bold red]error:[/] {escape(message)}")  # the message is text, not markup: [::1], mcpdb[node]
    sys.exit(code)
