"""The one exception type the CLI turns into a single clear line, and the helper that shortens foreign errors.

Library messages are written in API terms: a parameter is named as the Python API spells it, as `name=value`
(`flops_budget=1.5: ...`) or backquoted (``give `flops_budget` or `max_drop`, not both``), and listed in `params`,
so the CLI can show the same message with its flags (`--flops-budget 1.5: ...`) and a Python caller reads names
it can pass.
"""

from __future__ import annotations

from collections.abc import Sequence


class OvclipError(Exception):
    """A user-facing error: what is wrong, with which file, what to do.

    `params`: the API parameter names the message mentions (as `name=value` or backquoted `` `name` ``); a front
    end that spells them differently (the CLI's `--flags`) rewrites exactly those spellings.
    """

    def __init__(self, message: str, *, params: str | Sequence[str] = ()) -> None:
        super().__init__(message)
        self.params: tuple[str, ...] = (params,) if isinstance(params, str) else tuple(params)


def first_line(exc: BaseException, *, limit: int | None = None, default: str | None = None, skip=()) -> str:
    """The first non-blank line of `exc`'s message, stripped, for a one-line error that quotes a foreign one.

    Lines starting with any prefix in `skip` (boilerplate a library prepends) are passed over. With no line left:
    `default`, or the exception's type name when `default` is None. `limit` cuts the line to that many characters.
    """
    prefixes = tuple(skip)
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not (prefixes and ln.startswith(prefixes))]
    line = lines[0] if lines else (type(exc).__name__ if default is None else default)
    return line[:limit] if limit is not None else line
