"""`config.json` of an OpenVINO Model Server repository: one `model_config_list` entry per model.

OVMS validates the file against its JSON schema (openvinotoolkit/model_server, src/schema.cpp) and refuses
any key the schema does not list; an entry's `config` needs `name` and `base_path` and may hold, among others,
`batch_size`, `shape`, `nireq`, `target_device` and `plugin_config`. ovclip writes only those keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ovclip.errors import OvclipError

# The keys of a model config that OVMS's schema allows, with the JSON types it accepts (src/schema.cpp).
ALLOWED_KEYS = {
    "name": (str,),
    "base_path": (str,),
    "batch_size": (int, str),
    "model_version_policy": (dict,),
    "shape": (dict, str),
    "nireq": (int,),
    "target_device": (str,),
    "plugin_config": (dict,),
    "stateful": (bool,),
    "idle_sequence_cleanup": (bool,),
    "low_latency_transformation": (bool,),
    "max_sequence_number": (int,),
}
HINTS = {"throughput": "THROUGHPUT", "latency": "LATENCY"}


@dataclass
class ModelEntry:
    name: str
    base_path: str  # relative to config.json (OVMS resolves it against the file's folder)
    target_device: str
    plugin_config: dict[str, str]
    shape: dict[str, str] = field(default_factory=dict)  # static inputs only: {"pixel_values": "(2,3,224,224)"}

    def to_config(self) -> dict:
        config: dict = {
            "name": self.name,
            "base_path": self.base_path,
            "target_device": self.target_device,
            "plugin_config": dict(self.plugin_config),
        }
        if self.shape:
            config["shape"] = dict(self.shape)
        check_keys(config)
        return {"config": config}


def plugin_config(device: str, hint: str) -> dict[str, str]:
    """The performance hint, and on CPU f32 execution (what `Deployment` runs by default, so outputs match it
    also on CPUs where the plugin would otherwise run FP32 layers in bf16)."""
    if hint not in HINTS:
        raise OvclipError(f"hint={hint!r}: choose throughput or latency", params="hint")
    config = {"PERFORMANCE_HINT": HINTS[hint]}
    if device.upper().startswith("CPU"):
        config["INFERENCE_PRECISION_HINT"] = "f32"
    return config


def shape_text(dims: list[int]) -> str:
    return "(" + ",".join(str(d) for d in dims) + ")"


def check_keys(config: dict) -> None:
    """Refuse a config OVMS would refuse: unknown keys, wrong JSON types, missing name/base_path."""
    for key in ("name", "base_path"):
        if key not in config:
            raise OvclipError(f"OVMS model config without {key!r}")
    for key, value in config.items():
        types = ALLOWED_KEYS.get(key)
        if types is None:
            raise OvclipError(f"OVMS model config key {key!r} is not in OVMS's schema")
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise OvclipError(f"OVMS model config key {key!r}: {type(value).__name__} is not allowed")


def repository_config(entries: list[ModelEntry]) -> dict:
    return {"model_config_list": [e.to_config() for e in entries]}
