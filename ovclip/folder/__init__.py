"""The deployment folder: IR files, tokenizer, preprocessing and a self-describing manifest."""

from ovclip.folder.manifest import FORMAT_VERSION, Manifest, read_manifest, write_manifest
from ovclip.folder.writer import atomic_folder, check_target, staging_folder

__all__ = [
    "FORMAT_VERSION",
    "Manifest",
    "read_manifest",
    "write_manifest",
    "staging_folder",
    "check_target",
    "atomic_folder",
]
