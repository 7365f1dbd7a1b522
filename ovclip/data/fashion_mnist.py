"""Fashion-MNIST in its original idx format (as Debian's `dataset-fashion-mnist` installs it)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ovclip.errors import OvclipError

DEBIAN_PATH = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = (
    "T-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _open(path: Path):
    for candidate in (path, path.with_name(path.name + ".gz")):
        if candidate.exists():
            return gzip.open(candidate, "rb") if candidate.suffix == ".gz" else open(candidate, "rb")
    raise OvclipError(
        f"Fashion-MNIST file {path.name}(.gz) not found in {path.parent}; "
        "install Debian's dataset-fashion-mnist or pass the folder holding the idx files"
    )


def read_idx(path: Path) -> np.ndarray:
    """Read one idx file (magic, dims, big-endian uint8 payload)."""
    with _open(path) as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise OvclipError(f"{path}: not an unsigned-byte idx file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    payload = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(dims)):
        raise OvclipError(f"{path}: idx header says {dims} but holds {payload.size} bytes (truncated?)")
    return payload.reshape(dims)


def load_split(split: str, root: Path | str = DEBIAN_PATH) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of the `train` or `test` split."""
    if split not in _FILES:
        raise OvclipError(f"unknown Fashion-MNIST split {split!r}; use 'train' or 'test'")
    img_name, lab_name = _FILES[split]
    images = read_idx(Path(root) / img_name)
    labels = read_idx(Path(root) / lab_name).astype(np.int64)
    if len(images) != len(labels):
        raise OvclipError(f"{root}: {len(images)} images but {len(labels)} labels in split {split}")
    return images, labels
