"""Per-block quantization analysis of a deployment folder pair (paper §3 QIRC, §6.4, §7 rescue quadrants).

    from ovclip.analyze import BlockTaps, analyze_folders
    z = BlockTaps("out/fp32")(pixels)              # activations after every vision block (IR surgery)
    result = analyze_folders("out/fp32", "out/int8", data="builtin", images=500)

Runtime only: openvino, numpy; no torch. The `ovclip analyze` tables and plot are in `ovclip.cli`.
"""

from ovclip.analyze.run import analyze_folders
from ovclip.analyze.surgery import BlockTaps, find_block_outputs

__all__ = ["BlockTaps", "analyze_folders", "find_block_outputs"]
