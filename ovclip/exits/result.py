"""What an exit calibration (labelled or label-free) hands to the folder's writer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import openvino as ov

from ovclip.policy.rules import ExitPolicy


@dataclass
class ExitBuild:
    exits: list[int]  # blocks after which samples may leave (the vision tower is split there)
    heads: Mapping[int, ov.Model]  # exit -> head IR (embedding + SAV from the hidden states); not yet saved
    policy: ExitPolicy  # the folder's rule (with a label set), how it was calibrated in `info`; heads not yet named
    embedding_policy: ExitPolicy  # the label-free rule: exits without a label set (embeddings, retrieval)
