"""Where the vision tower is cut: after each exit block, so a runtime can stop after any stage."""

from __future__ import annotations

from collections.abc import Sequence

from ovclip.errors import OvclipError

# The paper's exits for a 12-block ViT-B/32: after blocks 8, 10 and 11 (block 9 pruned as pathological).
PAPER_EXITS_12 = (8, 10, 11)


def default_exits(num_layers: int) -> list[int]:
    """The paper's exit blocks, scaled to a tower of another depth."""
    exits = sorted({max(1, min(num_layers - 1, round(e * num_layers / 12))) for e in PAPER_EXITS_12})
    return [e for e in exits if 1 <= e < num_layers]


def parse_exits(spec: str | Sequence[int] | None, num_layers: int) -> list[int]:
    """`None`/'default' -> paper exits; 'none' -> no split; '4,6,8' -> those blocks (1-based)."""
    if spec is None or spec == "default":
        return default_exits(num_layers)
    if isinstance(spec, str):
        if spec.strip().lower() == "none":
            return []
        try:
            spec = [int(s) for s in spec.replace(" ", "").split(",") if s]
        except ValueError:
            raise OvclipError(
                f"exits={spec!r}: give block numbers like 8,10,11, 'default' or 'none'", params="exits"
            ) from None
    exits = sorted(set(int(e) for e in spec))
    bad = [e for e in exits if not 1 <= e < num_layers]
    if bad:
        raise OvclipError(
            f"exits={bad}: exit blocks must lie in 1..{num_layers - 1} for a {num_layers}-block tower", params="exits"
        )
    return exits


def stage_bounds(num_layers: int, exits: Sequence[int]) -> list[tuple[int, int]]:
    """Half-open block ranges [start, end) of each stage, 0-based; the last stage ends the tower."""
    cuts = [0, *sorted(exits), num_layers]
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
