"""ovclip: CLIP on Intel hardware with OpenVINO (INT8 with NNCF, early exit in IR, benchmarks)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ovclip")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"

__all__ = ["__version__"]
