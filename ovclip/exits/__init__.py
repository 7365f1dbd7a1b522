"""Early-exit calibration (LRA-EE), in torch: SSA heads, gates, INR-based layer choice, thresholds.

`build.build_exits` runs the steps and returns heads and policies; it writes nothing (the quantize pipeline
does). The policy those steps produce, and every runtime applies, is numpy-only and lives in `ovclip.policy`.
"""
