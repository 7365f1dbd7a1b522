"""Which configurations of a deployment folder `ovclip bench` measures, and which one the folder deploys.

A variant is (name, CPU inference precision asked for, early exit on). Every precision timed gets an early-exit
twin `<name>-ee` when the folder has an exit policy. The deployed configuration is what `Deployment(folder)`
runs when not told otherwise (`ovclip.folder.deployed`): the manifest's "deployed" record where `ovclip deploy`
wrote one, else f32 on CPU with early exit where the folder has an exit policy.
"""

from __future__ import annotations

from dataclasses import dataclass

from ovclip.folder.deployed import deployed_early_exit, deployed_precision, has_exits
from ovclip.runtime.device import core, supports_bf16

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
    out = []
    for name, p in _precisions(manifest.variant, device, precision):
        out.append(Variant(name, p, False))
        if has_exits(manifest):
            out.append(Variant(name + EE_SUFFIX, p, True))
    return out


def plugin_default_precision(device: str = "CPU") -> str | None:
    """The precision the device runs float layers in when not told ('f32', 'bf16', 'f16'); None if it won't say."""
    try:
        return core().get_property(device, "INFERENCE_PRECISION_HINT").get_type_name()
    except RuntimeError:
        return None


def deployed_config(manifest, device: str = "CPU") -> tuple[str | None, bool]:
    """(inference precision, early exit) of the folder's deployed configuration (`ovclip.folder.deployed`); the
    precision is None off CPU and where the folder deploys the plugin's default."""
    cpu = device.upper().startswith("CPU")
    return (deployed_precision(manifest) if cpu else None), deployed_early_exit(manifest)


def is_deployed(manifest, device: str, variant: Variant, executed_precision: str) -> bool:
    """Whether `variant`, which ran in `executed_precision`, is the folder's deployed configuration."""
    precision, ee = deployed_config(manifest, device)
    if variant.early_exit != ee:
        return False
    if not device.upper().startswith("CPU"):
        return True
    return executed_precision == (precision or plugin_default_precision(device))
