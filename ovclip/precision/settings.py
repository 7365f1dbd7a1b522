"""What `ovclip deploy` is asked for (`DeploySettings`), and the calibration images it measures candidates on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from ovclip.errors import OvclipError
from ovclip.exits.config import ExitBuildConfig, split_calibration
from ovclip.precision.decide import Tolerance

Choice = Literal["auto", "int8", "f32", "bf16", "f16"]
CHOICES: tuple[str, ...] = get_args(Choice)
FLOAT_CHOICES = ("f32", "bf16", "f16")


@dataclass(frozen=True)
class DeploySettings:
    precision: Choice = "auto"
    device: str = "CPU"
    tolerance: Tolerance = field(default_factory=Tolerance)
    rounds: int = 3  # rotating rounds every configuration is timed in
    seconds: float = 2.0  # timed seconds per configuration and round
    batch: int | None = None  # images per call in the timing (None: each candidate's own, measured)
    static_batch: int | None = None
    overwrite: bool = False
    keep_candidates: str | Path | None = None  # where to keep every candidate folder (None: removed)

    def __post_init__(self) -> None:
        if self.precision not in CHOICES:
            raise OvclipError(f"precision={self.precision!r}: choose one of {', '.join(CHOICES)}", params="precision")
        if self.rounds < 1 or self.seconds <= 0 or (self.batch is not None and self.batch < 1):
            raise OvclipError(
                f"rounds={self.rounds}, seconds={self.seconds}, batch={self.batch}: all must be positive",
                params=("rounds", "seconds", "batch"),
            )


def measurement_split(calibration, early_exit: ExitBuildConfig | None):
    """The calibration images the candidates are measured on: the exit calibration's threshold split (held out
    from head training and gate fitting; the thresholds were chosen on them). Never a test split."""
    cfg = early_exit or ExitBuildConfig()
    idx = split_calibration(len(calibration), cfg)[2]
    return calibration.subset(idx, source=f"{calibration.source} (threshold split, {len(idx)} images)")
