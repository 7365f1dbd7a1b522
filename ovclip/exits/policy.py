"""The exit policy a runtime applies after each exit stage (numpy only: no torch at run time).

Rules:
- ``gate``: the paper's learned gate, sigmoid(w . [top-1 prob, top-1 - top-2 margin, SAV] + b) >= tau_L.
- ``confidence``: the baseline the paper beats: top-1 softmax probability >= tau_L.
- ``agreement``: needs no label set (embedding/retrieval use): cosine between this exit's embedding and
  the previous exit's >= tau_L; the first exit has no previous one, so samples leave from the second on.
A threshold of ``None`` means "never exit here".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ovclip.errors import OvclipError

RULES = ("gate", "confidence", "agreement")


def softmax(scores: np.ndarray) -> np.ndarray:
    z = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def confidence_features(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 probability and top-1 minus top-2 probability of each row of logits."""
    p = softmax(scores.astype(np.float64))
    if p.shape[1] < 2:
        return p[:, 0], p[:, 0]
    top2 = np.partition(p, -2, axis=1)[:, -2:]
    return top2[:, 1], top2[:, 1] - top2[:, 0]


@dataclass
class Gate:
    """Logistic gate on standardised (confidence, margin, SAV)."""

    w: np.ndarray
    b: float
    mu: np.ndarray
    sd: np.ndarray

    def features(self, scores: np.ndarray, sav: np.ndarray) -> np.ndarray:
        c, m = confidence_features(scores)
        return (np.stack([c, m, sav.astype(np.float64)], axis=1) - self.mu) / self.sd

    def __call__(self, scores: np.ndarray, sav: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(self.features(scores, sav) @ self.w + self.b)))

    def to_dict(self) -> dict:
        return {"w": self.w.tolist(), "b": float(self.b), "mu": self.mu.tolist(), "sd": self.sd.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Gate:
        return cls(np.asarray(d["w"], float), float(d["b"]), np.asarray(d["mu"], float), np.asarray(d["sd"], float))


@dataclass
class ExitPolicy:
    rule: str
    exits: list[int]
    heads: dict[int, str]
    thresholds: dict[int, float | None]
    gates: dict[int, Gate] = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # how it was calibrated, figures measured then

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise OvclipError(f"unknown exit rule {self.rule!r}; known: {', '.join(RULES)}")
        if self.rule == "gate" and set(self.gates) != set(self.exits):
            raise OvclipError("a 'gate' exit policy needs one gate per exit layer")

    @property
    def needs_labels(self) -> bool:
        return self.rule in ("gate", "confidence")

    def head_file(self, layer: int) -> str:
        return self.heads[layer]

    def score(
        self, layer: int, scores: np.ndarray | None, sav: np.ndarray, prev: np.ndarray | None, emb: np.ndarray
    ) -> np.ndarray:
        """The quantity compared with the threshold (higher = more ready to exit)."""
        if self.rule == "gate":
            return self.gates[layer](scores, sav)
        if self.rule == "confidence":
            return confidence_features(scores)[0]
        if prev is None:
            return np.full(len(emb), -np.inf)
        return np.sum(emb * prev, axis=1)

    def decide(
        self, layer: int, emb: np.ndarray, sav: np.ndarray, scores: np.ndarray | None, prev: np.ndarray | None
    ) -> np.ndarray:
        tau = self.thresholds.get(layer)
        if tau is None:
            return np.zeros(len(emb), bool)
        return self.score(layer, scores, sav, prev, emb) >= tau

    def with_thresholds(self, thresholds: dict[int, float | None]) -> ExitPolicy:
        return ExitPolicy(self.rule, self.exits, self.heads, dict(thresholds), self.gates, self.info)

    def to_dict(self) -> dict:
        return {
            "rule": self.rule,
            "exits": self.exits,
            "heads": {str(k): v for k, v in self.heads.items()},
            "thresholds": {str(k): v for k, v in self.thresholds.items()},
            "gates": {str(k): g.to_dict() for k, g in self.gates.items()},
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ExitPolicy:
        try:
            return cls(
                rule=d["rule"],
                exits=[int(e) for e in d["exits"]],
                heads={int(k): v for k, v in d["heads"].items()},
                thresholds={int(k): (None if v is None else float(v)) for k, v in d["thresholds"].items()},
                gates={int(k): Gate.from_dict(g) for k, g in d.get("gates", {}).items()},
                info=d.get("info", {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise OvclipError(f"the manifest's exit_policy is malformed ({e}); re-run `ovclip quantize`") from None
