"""Which precision to deploy on the target device, measured: `deploy` builds the candidates (FP32 IR and INT8, each
with exits), times them on calibration images in rotating rounds and deploys the fastest within a tolerance of
FP32 (`decide`); the deployed folder's manifest records the figures and the reason."""

from ovclip.precision.decide import Decision, Measured, Tolerance, decide
from ovclip.precision.deploy import deploy
from ovclip.precision.settings import CHOICES, DeploySettings

__all__ = ["CHOICES", "Decision", "DeploySettings", "Measured", "Tolerance", "decide", "deploy"]
