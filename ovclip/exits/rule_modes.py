"""The exit rules `ovclip quantize --exit-rule` offers (`ovclip.exits.rule_select` chooses among them)."""

from __future__ import annotations

from typing import Literal, get_args

# "auto": per FLOPs budget the simplest candidate not significantly below the best cross-fitted accuracy on
# calibration data; "paper": the
# paper's gate (confidence, margin, SAV); "select": per exit the gate features with the best CV AUC;
# "confidence": top-1 probability alone; "label-free": agreement with the previous exit (needs no label set).
ExitRuleMode = Literal["auto", "paper", "select", "confidence", "label-free"]
EXIT_RULE_MODES: tuple[str, ...] = get_args(ExitRuleMode)
