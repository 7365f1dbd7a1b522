"""What every `ovclip` subcommand shares: the console, one-line errors (with API names shown as flags), progress
bars for the library's progress events, logging."""

from __future__ import annotations

import functools
import re
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ovclip.errors import OvclipError, first_line
from ovclip.progress import ProgressEvent

console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
MODEL_HELP = (
    "Checkpoint: 'builtin' (default, the model shipped in the package), a Hugging Face CLIP folder or id, "
    "an OpenAI/open_clip or HF state dict (.safetensors, .pt, .bin), or 'random:vit-b-32' (speed only)."
)
# API parameter names whose flag is not the click option of the same name in the running command.
API_FLAGS = {
    "seconds": "--time",
    "smooth_quant_alpha": "--smooth-quant",
    "dataset": "--data",
    "src": "--model",  # load_checkpoint(src)
    "hidden_act": "--act",
}


def flag_for(ctx: click.Context | None, param: str) -> str | None:
    """The command-line spelling of API parameter `param` in the running command (None: no flag for it)."""
    if ctx is not None:
        for p in ctx.command.params:
            if isinstance(p, click.Option) and p.name == param:
                return max(p.opts, key=len)
    return API_FLAGS.get(param) or (f"--{param.replace('_', '-')}" if ctx is None else None)


def cli_message(e: OvclipError, ctx: click.Context | None = None) -> str:
    """`e`'s message with each API parameter it names written as the flag that sets it: `batch=0` -> `--batch 0`,
    a backquoted `max_drop` -> `--max-drop`."""
    msg = str(e)
    for param in e.params:
        flag = flag_for(ctx, param)
        if flag is None:
            continue
        # `name=` where a word starts (not inside a path such as /data/batch=3/)
        msg = re.sub(rf"(?:^|(?<=[\s(\[,;])){re.escape(param)}=", lambda _, flag=flag: flag + " ", msg)
        msg = msg.replace(f"`{param}`", flag)
    return msg


def friendly(fn):
    """Turn OvclipError (and anything unexpected) into one line and a non-zero exit; --debug shows more."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context()
        debug = ctx.find_root().params.get("debug", False)
        try:
            return fn(*args, **kwargs)
        except OvclipError as e:
            if debug:
                traceback.print_exc()
            console.print(f"[bold red]error:[/] {escape(cli_message(e, ctx))}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except KeyboardInterrupt:
            console.print("[bold red]interrupted[/]")
            sys.exit(130)
        except click.exceptions.Exit:
            raise
        except Exception as e:  # noqa: BLE001 - the promise is one line, never a traceback
            if debug:
                traceback.print_exc()
            console.print(
                f"[bold red]error:[/] {type(e).__name__}: {escape(first_line(e, default=''))} "
                "(run with --debug for the traceback)",
                highlight=False,
                soft_wrap=True,
            )
            sys.exit(1)

    return wrapper


def log(msg: str) -> None:
    console.print(msg, highlight=False)


def show_note(print_line, event: ProgressEvent) -> None:
    text = escape(event.note or "")
    print_line(f"[yellow]{text}[/]" if event.warning else text, highlight=False)


def print_note(event: ProgressEvent) -> None:
    """A progress callback that prints notes and ignores fractions (for work too short for a bar)."""
    if event.note is not None:
        show_note(console.print, event)


@contextmanager
def progress_bars() -> Iterator:
    """A progress callback drawing one transient rich bar per task; notes print above the bars."""
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console, transient=True
    ) as bar:
        tasks: dict[str, int] = {}

        def handle(event: ProgressEvent) -> None:
            if event.note is not None:
                show_note(bar.console.print, event)
            if event.fraction is not None:
                if event.task not in tasks:
                    tasks[event.task] = bar.add_task(event.task, total=1.0)
                bar.update(tasks[event.task], completed=event.fraction)

        yield handle
