"""What every `ovclip` subcommand shares: the console, one-line errors, logging."""

from __future__ import annotations

import functools
import sys
import traceback

import click
from rich.console import Console
from rich.markup import escape

from ovclip.errors import OvclipError

console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
MODEL_HELP = (
    "Checkpoint: 'builtin' (default, the model shipped in the package), a Hugging Face CLIP folder or id, "
    "an OpenAI/open_clip or HF state dict (.safetensors, .pt, .bin), or 'random:vit-b-32' (speed only)."
)


def friendly(fn):
    """Turn OvclipError (and anything unexpected) into one line and a non-zero exit; --debug shows more."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        debug = click.get_current_context().find_root().params.get("debug", False)
        try:
            return fn(*args, **kwargs)
        except OvclipError as e:
            if debug:
                traceback.print_exc()
            console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            sys.exit(2)
        except KeyboardInterrupt:
            console.print("[bold red]interrupted[/]")
            sys.exit(130)
        except click.exceptions.Exit:
            raise
        except Exception as e:  # noqa: BLE001 - the promise is one line, never a traceback
            if debug:
                traceback.print_exc()
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            console.print(
                f"[bold red]error:[/] {type(e).__name__}: {escape(msg)} (run with --debug for the traceback)",
                highlight=False,
                soft_wrap=True,
            )
            sys.exit(1)

    return wrapper


def log(msg: str) -> None:
    console.print(msg, highlight=False)
