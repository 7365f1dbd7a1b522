"""Which configurations of a deployment folder `ovclip bench` measures, and which one the folder deploys.

A variant is (name, CPU inference precision asked for, early exit on). Every precision timed gets an early-exit
twin `<name>-ee` when the folder has an exit policy. The deployed configuration is the one a user gets from
`Deployment(folder)` with no arguments — f32 inference precision on CPU (the device's own default elsewhere),
early exit on when the folder has an exit policy — unless the folder's manifest records another choice under
"deployed": {"inference_precision": "f32" | "bf16" | "f16" | null, "early_exit": true | false} (null: the
plugin's default precision).
"""

from __future__ import annotations

from dataclasses import dataclass

from ovclip.runtime.device import supports_bf16

EE_SUFFIX = "-ee"


@dataclass(frozen=True)
class Variant:
    name: str
    precision: str | None  # CPU inference precision asked for; None: the plugin's default
    early_exit: bool

    @property
    def full_depth_name(self) -> str:
        """The name of the same configuration with exits off."""
        return self.name[: -len(EE_SUFFIX)] if self.early_exit else self.name


def _precisions(kind: str, device: str, precision: str) -> list[tuple[str, str | None]]:
    """(name, precision asked for) of the full-depth variants of a folder of `kind` (fp32, fp16, int8)."""
    cpu = device.upper().startswith("CPU")
    if not cpu:
        return [(kind, None)]
    if precision != "auto":
        name = kind if precision == "f32" or kind not in ("fp32", "fp16") else precision
        return [(name, precision)]
    bf16 = supports_bf16(device)
    if kind in ("fp32", "fp16"):
        return [(kind, "f32"), *([("bf16", "bf16")] if bf16 else [])]
    # quantized: the plugin's default for the layers left in float (bf16 where the CPU has it), and f32 beside
    # it on such CPUs, since f32 is what Deployment() runs by default
    return [(kind, None), *([(f"{kind}-f32", "f32")] if bf16 else [])]


def variants(manifest, device: str = "CPU", precision: str = "auto") -> list[Variant]:
    """The variants of one folder, full depth first, each followed by its early-exit twin where there is one."""
    has_exits = bool(manifest.get("exit_policy") or manifest.get("exit_policy_embedding"))
    out = []
    for name, p in _precisions(manifest.variant, device, precision):
        out.append(Variant(name, p, False))
        if has_exits:
            out.append(Variant(name + EE_SUFFIX, p, True))
    return out


def deployed_config(manifest, device: str = "CPU") -> tuple[str | None, bool]:
    """(inference precision, early exit) of the folder's deployed configuration (see the module docstring);
    precision None: whatever the device runs by default."""
    d = manifest.get("deployed")
    has_exits = bool(manifest.get("exit_policy") or manifest.get("exit_policy_embedding"))
    if isinstance(d, dict):
        return d.get("inference_precision"), bool(d.get("early_exit", has_exits)) and has_exits
    return ("f32" if device.upper().startswith("CPU") else None), has_exits


def is_deployed(manifest, device: str, variant: Variant, executed_precision: str) -> bool:
    """Whether `variant`, which ran in `executed_precision`, is the folder's deployed configuration."""
    precision, ee = deployed_config(manifest, device)
    return variant.early_exit == ee and (precision is None or precision == executed_precision)
