"""`ovclip verify DIR`: a short report of `ovclip.verify.verify_deployment`, or one error line."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ovclip.cli.common import friendly
from ovclip.errors import OvclipError
from ovclip.verify import verify_deployment


@click.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--no-ir", is_flag=True, help="Skip reading the IR files with OpenVINO (checksums and structure only).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout (also when it fails).")
@friendly
def verify(folder: Path, no_ir: bool, as_json: bool) -> None:
    """Check a deployment folder against its manifest: checksums, IR files, stages, exit policy."""
    report = verify_deployment(folder, read_ir=not no_ir)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    if not report.ok:
        raise OvclipError(report.first_error())
    if not as_json:
        click.echo(f"verified {folder}")
        for c in report.checks:
            click.echo(f"  {c.name:<21} {c.detail}")
        click.echo("ok")
