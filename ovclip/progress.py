"""How the library tells its caller what it is doing without printing: a callback that receives events.

    def show(event: ProgressEvent) -> None: ...
    analyze_folders("out/fp32", "out/int8", progress=show)

An event is either a fraction of a named task done (`task` + `fraction`) or a line for the user (`note`,
plain text, `warning` for caveats such as skipped images). The CLI draws bars and prints notes with rich;
a Python caller may log them, or pass nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    task: str = ""  # the work `fraction` belongs to, e.g. "int8 timing"
    fraction: float | None = None  # share of `task` done, in [0, 1]
    note: str | None = None  # a line for the user, plain text
    warning: bool = False  # the note is a caveat, not routine


Progress = Callable[[ProgressEvent], None]


def advance(progress: Progress | None, task: str, fraction: float) -> None:
    """Report that `fraction` of `task` is done (clipped to [0, 1]); nothing when there is no callback."""
    if progress is not None:
        progress(ProgressEvent(task=task, fraction=min(1.0, max(0.0, fraction))))


def note(progress: Progress | None, text: str, *, warning: bool = False) -> None:
    """Report a line for the user; nothing when there is no callback."""
    if progress is not None:
        progress(ProgressEvent(note=text, warning=warning))


def notes_to(log: Callable[[str], None]) -> Progress:
    """A callback that passes notes to `log` (e.g. `print`, `logging.info`) and drops fractions."""

    def handle(event: ProgressEvent) -> None:
        if event.note is not None:
            log(event.note)

    return handle
