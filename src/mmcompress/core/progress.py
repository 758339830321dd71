"""A progress bar for library steps that take more than a few seconds (GPTQ layer by layer, the
sequential refit, sensitivity probes): shown on an interactive terminal only, and gone when done.

`MMCOMPRESS_PROGRESS=0` hides it; `=1` shows it even when stderr is not a terminal.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress_shown() -> bool:
    """Whether progress bars are drawn: MMCOMPRESS_PROGRESS (0/1) if set, else stderr is a terminal.

    Example:
        >>> progress_shown()
        False
    """
    setting = os.environ.get("MMCOMPRESS_PROGRESS", "").strip()
    if setting in ("0", "1"):
        return setting == "1"
    return sys.stderr.isatty()


@contextlib.contextmanager
def steps(label: str, total: int) -> Iterator[Callable[[], None]]:
    """A transient bar of `total` steps; the context yields `advance()`.

    Example:
        >>> with steps("GPTQ", len(layers)) as advance:
        ...     for layer in layers:
        ...         advance()
    """
    if not progress_shown() or total < 2:
        yield lambda: None
        return
    from rich.console import Console
    from rich.errors import LiveError
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    bar = Progress(*columns, transient=True, console=Console(stderr=True))
    try:
        bar.start()
    except LiveError:  # another bar is live (a step inside a training loop): this one stays hidden
        yield lambda: None
        return
    try:
        handle = bar.add_task(label, total=total)
        yield lambda: bar.advance(handle)
    finally:
        bar.stop()


def tracked(items: Iterable[T], label: str, total: int | None = None) -> Iterator[T]:
    """`items`, with a transient progress bar (`steps`) while they are consumed.

    Example:
        >>> for name in tracked(names, "GPTQ"):
        ...     pass
    """
    items = list(items) if total is None else items
    with steps(label, len(items) if total is None else total) as advance:
        for item in items:
            yield item
            advance()
