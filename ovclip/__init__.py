"""ovclip: CLIP on Intel hardware with OpenVINO (INT8 with NNCF, early exit in IR, benchmarks).

    from ovclip import Deployment                       # the runtime: openvino + numpy + tokenizer, no torch
    from ovclip import load_checkpoint, export_deployment, quantize_deployment, QuantizationConfig, ExitBuildConfig

The names are imported on first use (a module `__getattr__`), so `import ovclip` and `from ovclip import
Deployment` on an edge box never load torch, transformers or NNCF; the build names need the `export` extra.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

try:
    __version__ = version("ovclip")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"

# public name -> module that defines it
_PUBLIC = {
    "Deployment": "ovclip.runtime.deployment",
    "OvclipError": "ovclip.errors",
    "ProgressEvent": "ovclip.progress",
    "load_checkpoint": "ovclip.checkpoint",
    "ExportOptions": "ovclip.export",
    "export_deployment": "ovclip.export",
    "QuantizationConfig": "ovclip.quantize.config",
    "quantize_deployment": "ovclip.quantize.pipeline",
    "ExitBuildConfig": "ovclip.exits.config",
}

__all__ = [
    "__version__",
    "Deployment",
    "OvclipError",
    "ProgressEvent",
    "load_checkpoint",
    "ExportOptions",
    "export_deployment",
    "QuantizationConfig",
    "quantize_deployment",
    "ExitBuildConfig",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time `__getattr__` imports on demand
    from ovclip.checkpoint import load_checkpoint
    from ovclip.errors import OvclipError
    from ovclip.exits.config import ExitBuildConfig
    from ovclip.export import ExportOptions, export_deployment
    from ovclip.progress import ProgressEvent
    from ovclip.quantize.config import QuantizationConfig
    from ovclip.quantize.pipeline import quantize_deployment
    from ovclip.runtime.deployment import Deployment


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'ovclip' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
