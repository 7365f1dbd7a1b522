"""A deployment folder as an OpenVINO Model Server model repository (`ovclip export-ovms`)."""

from ovclip.ovms.export import REPO_FILE, export_ovms

__all__ = ["REPO_FILE", "export_ovms"]
