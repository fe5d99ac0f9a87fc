"""Progress bars and warnings on stderr: the only terminal output compute modules make, kept apart
from the renderer (``report.py``) so that capture, evaluation and training never import it."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mi_bridge.errors import CheckFailed, UserError

console = Console(stderr=True)
T = TypeVar("T")
_silent = [False]
"""Whether bars are off and warnings go to Python's ``warnings`` (inside ``silenced``)."""


@contextmanager
def silenced(silent: bool = True) -> Iterator[None]:
    """Within: no progress bars, and warnings as Python warnings; the Python API's runs print nothing."""
    before, _silent[0] = _silent[0], silent
    try:
        yield
    finally:
        _silent[0] = before


def track(iterable: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """A progress bar on stderr (transient: it disappears when done, so reports stay clean)."""
    if _silent[0]:
        yield from iterable
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        yield from progress.track(iterable, total=total, description=description)


def warn(message: str) -> None:
    if _silent[0]:
        warnings.warn(message, stacklevel=2)
        return
    console.print(f"[yellow]warning:[/] {message}")


def error(message: str) -> None:
    """One line, no traceback (the message is text, not markup: ``.[ray]`` stays)."""
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def one_line_errors(body: Callable[[], int], interrupted: str) -> int:
    """Run a command: bad input (UserError) is one line and exit code 2, a failed positive control
    (CheckFailed) one line and 3, Ctrl-C one line and 130."""
    try:
        return body()
    except UserError as err:
        error(str(err))
        return 2
    except CheckFailed as err:
        error(str(err))
        return 3
    except KeyboardInterrupt:
        error(f"interrupted; {interrupted}")
        return 130
