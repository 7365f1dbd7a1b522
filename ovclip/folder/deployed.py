"""The configuration a deployment folder deploys: what `Deployment(folder)` runs when not told otherwise.

`ovclip deploy --precision auto` measures the candidate configurations on the target device and records its
choice in the manifest under "deployed": {"inference_precision": "f32" | "bf16" | "f16" | null, "early_exit":
true | false, "offline_batch": {"batch": 32, ...}, ...} (null: the plugin's default precision; the rest says what
was measured and why). A folder without that record deploys f32 on CPU, with early exit where it has an exit
policy, and `ovclip bench` measures its offline batch before timing it (`ovclip.bench.offline_batch`).
"""

from __future__ import annotations

from ovclip.errors import OvclipError

DEPLOYED = "deployed"
PRECISIONS = ("f32", "bf16", "f16")
DEFAULT_PRECISION = "f32"  # CPU, folders without a "deployed" record: float32 whatever the CPU's default


def has_exits(manifest) -> bool:
    return bool(manifest.get("exit_policy") or manifest.get("exit_policy_embedding"))


def deployed_precision(manifest) -> str | None:
    """The CPU inference precision the folder deploys (None: the plugin's default)."""
    record = manifest.get(DEPLOYED)
    if not isinstance(record, dict):
        return DEFAULT_PRECISION
    precision = record.get("inference_precision")
    if precision is not None and precision not in PRECISIONS:
        raise OvclipError(
            f"{manifest.folder}: deployed inference_precision {precision!r} is none of {', '.join(PRECISIONS)}; "
            "re-run `ovclip deploy`"
        )
    return precision


def deployed_early_exit(manifest) -> bool:
    """Whether the folder deploys early exit: its record's choice where there is one, else whenever it can."""
    record = manifest.get(DEPLOYED)
    choice = record.get("early_exit", True) if isinstance(record, dict) else True
    return bool(choice) and has_exits(manifest)


def deployed_batch(manifest, device: str, device_name: str | None) -> int | None:
    """The offline batch the folder's record says was fastest, where it was measured on this very device (same
    OpenVINO device and full device name, e.g. the same CPU model); else None (measure it)."""
    record = manifest.get(DEPLOYED)
    batch = record.get("offline_batch") if isinstance(record, dict) else None
    if not isinstance(batch, dict) or not isinstance(batch.get("batch"), int) or batch["batch"] < 1:
        return None
    same_device = str(record.get("device", "")).upper() == device.upper()
    if not same_device or device_name is None or record.get("device_name") != device_name:
        return None
    return batch["batch"]
