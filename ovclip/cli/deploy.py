"""`ovclip deploy`: the fastest configuration for this device, measured (FP32 IR or INT8, each with early exit)."""

from __future__ import annotations

import click

from ovclip.cli.common import friendly, log, progress_bars
from ovclip.cli.export import MODEL, OVERWRITE, STATIC_BATCH, out_option
from ovclip.errors import OvclipError


@click.command()
@MODEL
@out_option("out/deployed")
@click.option(
    "--precision",
    type=click.Choice(["auto", "int8", "f32", "bf16", "f16"]),
    default="auto",
    show_default=True,
    help="auto: build FP32 IR and INT8 (each with exits), time every configuration on this device (f32, the "
    "plugin's default float precision, INT8; with and without exits) and deploy the fastest within --tolerance "
    "of FP32. A given precision builds only its folder.",
)
@click.option("--device", default="CPU", show_default=True, help="OpenVINO device the candidates are timed on.")
@click.option(
    "--tolerance",
    type=float,
    default=0.5,
    show_default=True,
    help="Zero-shot top-1 points a deployed configuration may lose against FP32 (on calibration images).",
)
@click.option(
    "--fidelity-tolerance",
    type=float,
    default=0.02,
    show_default=True,
    help="Without labels: the mean cosine to FP32's embeddings a configuration may lose.",
)
@click.option(
    "--calibration",
    default="builtin:calibration",
    show_default=True,
    help="Calibration images (as for quantize); the candidates are timed on their held-out threshold split.",
)
@click.option("--exits", default="default", show_default=True, help="Exit blocks, as for quantize ('auto' too).")
@click.option("--no-exits", is_flag=True, help="No exit heads in any candidate.")
@click.option("--flops-budget", type=float, default=None, help="Early exit: as for quantize.")
@click.option("--max-drop", type=float, default=None, help="Early exit: as for quantize.")
@click.option("--smooth-quant", default="auto", show_default=True, help="INT8: SmoothQuant alpha, as for quantize.")
@click.option("--rounds", type=int, default=3, show_default=True, help="Rotating timing rounds.")
@click.option("--seconds", type=float, default=2.0, show_default=True, help="Timed seconds per configuration, round.")
@STATIC_BATCH
@click.option("--keep-candidates", type=click.Path(), default=None, help="Keep every candidate folder here.")
@OVERWRITE
@friendly
def deploy(model, out, precision, device, tolerance, fidelity_tolerance, calibration, exits, no_exits, **kw):
    """Build, measure on this device and write the fastest configuration within the tolerance of FP32."""
    from ovclip.checkpoint import load_checkpoint
    from ovclip.data.datasets import open_dataset
    from ovclip.folder import check_target
    from ovclip.precision import DeploySettings, Tolerance, deploy
    from ovclip.quantize import QuantizationConfig

    settings = DeploySettings(
        precision,
        device,
        Tolerance(tolerance, fidelity_tolerance),
        kw["rounds"],
        kw["seconds"],
        static_batch=kw["static_batch"],
        overwrite=kw["overwrite"],
        keep_candidates=kw["keep_candidates"],
    )
    ee, exits = exit_config(calibration, exits, no_exits, kw["flops_budget"], kw["max_drop"])
    quant = QuantizationConfig(smooth_quant_alpha=QuantizationConfig.parse_alpha(kw["smooth_quant"]))
    check_target(out, overwrite=settings.overwrite)  # before the (slow) checkpoint load and calibration
    ckpt = load_checkpoint(model)
    if ee is not None and not ckpt.trained:
        log("[yellow]random weights: exit heads would be meaningless; candidates without exits[/]")
        ee = None
    with progress_bars() as progress:
        data = open_dataset(calibration, progress=progress)
        m = deploy(ckpt, out, data, settings, quant, ee, exits=exits, progress=progress)
    d = m["deployed"]
    what = d.get("chosen", m["variant"])
    log(
        f"wrote {out}: {what}, inference precision {d['inference_precision'] or 'plugin default'}, "
        f"early exit {'on' if d['early_exit'] else 'off'} ({d['chosen_by']})"
    )


def exit_config(calibration: str, exits: str, no_exits: bool, flops_budget, max_drop):
    """The exit calibration settings (None: no exits) and the exit blocks, as `ovclip quantize` reads them."""
    if no_exits:
        if flops_budget is not None or max_drop is not None:
            raise OvclipError("--flops-budget/--max-drop set an exit policy; drop --no-exits to use them")
        return None, exits
    from ovclip.data.prompts import template_set_of
    from ovclip.exits.config import ExitBuildConfig

    ee = ExitBuildConfig(
        flops_budget=flops_budget,
        max_drop=max_drop,
        placement="auto" if exits == "auto" else "fixed",
        templates=template_set_of(calibration),
    )
    return ee, None if exits == "auto" else exits
