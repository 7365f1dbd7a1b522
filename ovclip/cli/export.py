"""`ovclip export` and `ovclip quantize`: write FP32/FP16 and INT8 (+ early exit) deployment folders."""

from __future__ import annotations

from pathlib import Path

import click

from ovclip.cli.common import MODEL_HELP, friendly, log, progress_bars
from ovclip.errors import OvclipError

# options export and quantize share
MODEL = click.option("--model", "model", default="builtin", show_default=True, help=MODEL_HELP)
STATIC_BATCH = click.option(
    "--static-batch", type=int, default=None, help="Fix the batch size (NPU needs static shapes)."
)
OVERWRITE = click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")


def out_option(default: str):
    return click.option(
        "--out",
        type=click.Path(path_type=Path),
        default=Path(default),
        show_default=True,
        help="Deployment folder to write.",
    )


@click.command()
@MODEL
@out_option("out/fp32")
@click.option(
    "--exits",
    default="default",
    show_default=True,
    help="Blocks after which the vision tower is split: 'default' (8,10,11 of 12, scaled), 'none', or '4,6,8'.",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16"]),
    default="fp32",
    show_default=True,
    help="Weight precision stored in the IR.",
)
@STATIC_BATCH
@click.option(
    "--act",
    type=click.Choice(["quick_gelu", "gelu"]),
    default=None,
    help="Activation for OpenAI-layout state dicts (open_clip-trained models use gelu).",
)
@OVERWRITE
@friendly
def export(model, out, exits, precision, static_batch, act, overwrite):
    """Write an FP32/FP16 OpenVINO IR deployment folder: text tower + vision tower split at the exits."""
    from ovclip.checkpoint import load_checkpoint
    from ovclip.export import ExportOptions, export_deployment
    from ovclip.folder import check_target

    check_target(out, overwrite=overwrite)  # before the (slow) checkpoint load
    ckpt = load_checkpoint(model, hidden_act=act)
    log(f"exporting {ckpt.description}")
    m = export_deployment(ckpt, out, ExportOptions(exits, precision, static_batch, overwrite))
    log(f"wrote {out} ({m['variant']}, stages {[s['blocks'] for s in m.vision['stages']]})")


@click.command()
@MODEL
@out_option("out/int8")
@click.option(
    "--calibration",
    default="builtin:calibration",
    show_default=True,
    help="Calibration images: 'builtin:calibration', Fashion-MNIST ('fashion-mnist:train' or a folder of idx "
    "files), a folder with one subfolder per class (labelled), a flat folder of images or an image list (.txt, one "
    'path per line) (unlabeled), or a captions JSONL ({"image": ..., "caption": ...} per line). Without labels the '
    "exit heads are distilled from the full-depth embedding and the exit rule is label-free (--min-fidelity).",
)
@click.option(
    "--no-labels",
    is_flag=True,
    help="Read --calibration as images without labels whatever its layout (subfolders are not classes).",
)
@click.option("--subset-size", type=int, default=300, show_default=True, help="Images NNCF collects statistics on.")
@click.option(
    "--smooth-quant",
    "smooth_quant",
    default="auto",
    show_default=True,
    help="SmoothQuant alpha in (0,1], 'off', or 'auto' (pick the alpha closest to FP32 on held-out images).",
)
@click.option(
    "--text",
    type=click.Choice(["fp16", "int8", "fp32"]),
    default="fp16",
    show_default=True,
    help="Text tower precision.",
)
@click.option(
    "--exits",
    default="default",
    show_default=True,
    help="Split/exit blocks, as for export ('auto': chosen by calibration).",
)
@click.option("--no-exits", is_flag=True, help="Plain INT8: no exit heads, gate or policy.")
@click.option(
    "--flops-budget",
    type=float,
    default=None,
    help="Early exit: most accurate thresholds whose mean FLOPs stay within this fraction of full depth.",
)
@click.option(
    "--max-drop",
    type=float,
    default=None,
    help="Early exit: fastest thresholds whose accuracy drop vs full depth stays below this many points "
    "(95% upper confidence bound on the calibration split).",
)
@click.option(
    "--min-fidelity",
    type=float,
    default=None,
    help="Label-free exit rule (runs without a label set, and every exit of an unlabeled calibration): fewest FLOPs "
    "whose mean cosine of early-exit to full-depth embeddings stays >= this (95% lower bound on held-out "
    "calibration images)  [default: 0.993]",
)
@click.option(
    "--exit-rule",
    type=click.Choice(["auto", "paper", "select", "confidence", "label-free"]),
    default=None,
    help="Early-exit rule. 'auto' (default): per FLOPs budget the simplest rule whose cross-fitted (5-fold) accuracy "
    "is not significantly below the best one's "
    "on the calibration images the heads were not trained on, every candidate's points in the manifest; 'paper': "
    "the paper's gate (confidence, margin, SAV); 'select': per exit the gate features with the best CV AUC; "
    "'confidence': top-1 probability; 'label-free': agreement with the previous exit.",
)
@click.option(
    "--gate-features",
    type=click.Choice(["paper", "select"]),
    default="paper",
    show_default=True,
    help="Old spelling: '--gate-features select' is '--exit-rule select'.",
)
@click.option(
    "--target-device",
    type=click.Choice(["ANY", "CPU", "GPU", "NPU"]),
    default="ANY",
    show_default=True,
    help="NNCF target device.",
)
@STATIC_BATCH
@click.option(
    "--act", type=click.Choice(["quick_gelu", "gelu"]), default=None, help="Activation for OpenAI-layout state dicts."
)
@click.option("--strict", is_flag=True, help="Stop on the first unreadable calibration image instead of skipping it.")
@OVERWRITE
@friendly
def quantize(
    model,
    out,
    calibration,
    no_labels,
    subset_size,
    smooth_quant,
    text,
    exits,
    no_exits,
    flops_budget,
    max_drop,
    min_fidelity,
    exit_rule,
    gate_features,
    target_device,
    static_batch,
    act,
    strict,
    overwrite,
):
    """NNCF INT8 of the vision stages (stage by stage) and text tower, with early-exit heads and policy."""
    from ovclip.checkpoint import load_checkpoint
    from ovclip.data.calibration_sets import open_calibration
    from ovclip.quantize import QuantizationConfig
    from ovclip.quantize.pipeline import quantize_deployment

    cfg = QuantizationConfig(
        subset_size=subset_size,
        smooth_quant_alpha=QuantizationConfig.parse_alpha(smooth_quant),
        text=text,
        target_device=target_device,
    )
    exit_options = dict(flops_budget=flops_budget, max_drop=max_drop, min_fidelity=min_fidelity, exit_rule=exit_rule)
    ee, exits = _exit_config(no_exits, exits, gate_features, calibration, **exit_options)
    from ovclip.folder import check_target

    check_target(out, overwrite=overwrite)  # before the (slow) checkpoint load and calibration
    ckpt = load_checkpoint(model, hidden_act=act)
    if ee is not None and not ckpt.trained:
        log("[yellow]random weights: exit heads would be meaningless; writing plain INT8 (--no-exits)[/]")
        ee = None
    with progress_bars() as progress:
        data = open_calibration(calibration, labels=False if no_labels else "auto", strict=strict, progress=progress)
    if data.skipped:
        log(
            f"[yellow]skipped {len(data.skipped)} unreadable calibration images (first: {data.skipped[0][0]}: "
            f"{data.skipped[0][1]})[/]"
        )
    with progress_bars() as progress:
        m = quantize_deployment(
            ckpt,
            out,
            data,
            cfg,
            exits=exits,
            static_batch=static_batch,
            overwrite=overwrite,
            early_exit=ee,
            progress=progress,
        )
    policy = m.get("exit_policy")
    extra = f", early exit at blocks {policy['exits']} ({policy['rule']})" if policy else ""
    log(f"wrote {out} (INT8 in {m['quantization']['seconds']} s{extra})")


def _exit_config(no_exits, exits, gate_features, calibration, **options):
    """(ExitBuildConfig or None, the exits to pass on) from quantize's exit flags; exit flags with --no-exits are an
    error."""
    if no_exits:
        if any(v is not None for v in options.values()) or gate_features != "paper":
            raise OvclipError(
                "--flops-budget/--max-drop/--min-fidelity/--exit-rule/--gate-features set an exit policy; drop "
                "--no-exits to use them"
            )
        return None, exits
    from ovclip.data.prompts import template_set_of
    from ovclip.exits.config import ExitBuildConfig

    placement = "auto" if exits == "auto" else "fixed"
    cfg = ExitBuildConfig(
        placement=placement, gate_features=gate_features, templates=template_set_of(calibration), **options
    )
    return cfg, (None if exits == "auto" else exits)
