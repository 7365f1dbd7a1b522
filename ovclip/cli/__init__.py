"""The `ovclip` command: a thin layer over the library (export, quantize, bench, analyze, devices, verify).

Everything click, rich and matplotlib lives in this package; a command module exposes click commands and is
registered below with one `main.add_command(...)` line.
"""

from __future__ import annotations

import click

from ovclip import __version__
from ovclip.cli.analyze import analyze
from ovclip.cli.bench import bench
from ovclip.cli.deploy import deploy
from ovclip.cli.devices import devices
from ovclip.cli.embed import embed, search
from ovclip.cli.export import export, quantize
from ovclip.cli.serve import export_ovms, serve
from ovclip.cli.verify import verify

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="ovclip")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def main(debug: bool) -> None:
    """Deploy CLIP on Intel CPUs, GPUs and NPUs with OpenVINO: export, INT8, early exit, benchmarks."""


main.add_command(export)
main.add_command(quantize)
main.add_command(bench)
main.add_command(analyze)
main.add_command(devices)
main.add_command(verify)
main.add_command(embed)
main.add_command(search)
main.add_command(serve)
main.add_command(export_ovms)
main.add_command(deploy)
