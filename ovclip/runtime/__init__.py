"""Run a deployment folder: staged vision inference with per-sample early exit, text encoding."""

from ovclip.runtime.deployment import Deployment, VisionOutput
from ovclip.runtime.device import available_devices, check_device

__all__ = ["Deployment", "VisionOutput", "available_devices", "check_device"]
