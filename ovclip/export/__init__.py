"""Checkpoint -> OpenVINO IR: the text tower as one IR, the vision tower as stages split at the exits."""

from ovclip.export.exporter import ExportOptions, export_deployment
from ovclip.export.stages import default_exits, stage_bounds

__all__ = ["ExportOptions", "export_deployment", "default_exits", "stage_bounds"]
