"""The exit policy, numpy only: used by the build (calibration) and by every runtime, never needing torch.

- `rules`: the per-exit decision (gate / confidence / agreement), the gate's features and `ExitPolicy`;
- `cascade`: which exit each sample takes under given thresholds, accuracy and FLOPs that follow;
- `trace`: the cascade inputs of a rule from a run that evaluated every head on every sample;
- `flops`: FLOPs per image counted from the tower's shapes;
- `inr`: quantization-noise diagnostics per block and the paper's pruning of pathological exits.
"""

from ovclip.policy.rules import ExitPolicy, Gate

__all__ = ["ExitPolicy", "Gate"]
