"""The exit policy a runtime applies after each exit stage (numpy only: no torch at run time).

Rules:
- ``gate``: a learned logistic gate, sigmoid(w . features + b) >= tau_L. The paper's features are top-1
  probability, top-1 - top-2 margin and SAV; from the second exit on, agreement with the previous exit
  (cosine of the two embeddings, same top-1 class) is available too. Each exit's gate names its features.
- ``confidence``: the baseline the paper beats: top-1 softmax probability >= tau_L.
- ``agreement``: needs no label set (embedding/retrieval use): cosine between this exit's embedding and
  the previous exit's >= tau_L; the first exit has no previous one, so samples leave from the second on.
- ``fidelity``: needs no label set: the exit's predicted cosine to the full-depth embedding (`FidelityModel`,
  a linear function of the exit's embedding and, from the second exit on, its agreement with the previous
  exit) >= tau_L; calibrated so the mean cosine to full depth stays above a bound (`ovclip.exits.fidelity`).
A threshold of ``None`` means "never exit here".
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, get_args

import numpy as np

from ovclip.errors import OvclipError

Rule = Literal["gate", "confidence", "agreement", "fidelity"]
RULES: tuple[Rule, ...] = get_args(Rule)
LABEL_FREE_RULES: tuple[Rule, ...] = ("agreement", "fidelity")


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


PAPER_GATE_FEATURES = ("confidence", "margin", "sav")
PREVIOUS_EXIT_FEATURES = ("agreement", "same_top1")  # need the previous exit's embedding and class scores
GATE_FEATURES = (*PAPER_GATE_FEATURES, *PREVIOUS_EXIT_FEATURES)


def gate_feature_values(
    names: tuple[str, ...] | list[str],
    scores: np.ndarray,
    sav: np.ndarray,
    emb: np.ndarray | None = None,
    prev: np.ndarray | None = None,
    prev_scores: np.ndarray | None = None,
) -> np.ndarray:
    """(N, len(names)) gate inputs: confidence and margin of the class scores, SAV of the patch tokens,
    agreement = cosine between this exit's and the previous exit's embeddings, same_top1 = 1 where both
    exits rank the same class first."""
    cols = []
    c, m = confidence_features(scores)
    for name in names:
        if name == "confidence":
            cols.append(c)
        elif name == "margin":
            cols.append(m)
        elif name == "sav":
            cols.append(np.asarray(sav, np.float64).reshape(-1))
        elif name == "agreement":
            cols.append(np.sum(np.asarray(emb, np.float64) * np.asarray(prev, np.float64), axis=1))
        elif name == "same_top1":
            cols.append((np.argmax(scores, axis=1) == np.argmax(prev_scores, axis=1)).astype(np.float64))
        else:
            raise OvclipError(f"unknown gate feature {name!r}; known: {', '.join(GATE_FEATURES)}")
    return np.stack(cols, axis=1)


@dataclass
class Gate:
    """Logistic gate on standardised features (`features` names them, in order)."""

    w: np.ndarray
    b: float
    mu: np.ndarray
    sd: np.ndarray
    features: tuple[str, ...] = PAPER_GATE_FEATURES

    def __post_init__(self) -> None:
        self.features = tuple(self.features)
        unknown = [f for f in self.features if f not in GATE_FEATURES]
        if unknown or not len(self.w) == len(self.mu) == len(self.sd) == len(self.features):
            raise OvclipError(
                f"malformed gate: features {list(self.features)} (known: {', '.join(GATE_FEATURES)}) with "
                f"{len(self.w)} weights, {len(self.mu)} means, {len(self.sd)} scales"
            )

    @property
    def needs_previous(self) -> bool:
        return any(f in PREVIOUS_EXIT_FEATURES for f in self.features)

    def logit(
        self,
        scores: np.ndarray,
        sav: np.ndarray,
        emb: np.ndarray | None = None,
        prev: np.ndarray | None = None,
        prev_scores: np.ndarray | None = None,
    ) -> np.ndarray:
        x = gate_feature_values(self.features, scores, sav, emb, prev, prev_scores)
        return ((x - self.mu) / self.sd) @ self.w + self.b

    def __call__(self, scores, sav, emb=None, prev=None, prev_scores=None) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logit(scores, sav, emb, prev, prev_scores)))

    def to_dict(self) -> dict:
        return {
            "features": list(self.features),
            "w": self.w.tolist(),
            "b": float(self.b),
            "mu": self.mu.tolist(),
            "sd": self.sd.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Gate:
        return cls(
            np.asarray(d["w"], float),
            float(d["b"]),
            np.asarray(d["mu"], float),
            np.asarray(d["sd"], float),
            tuple(d.get("features", PAPER_GATE_FEATURES)),  # folders written before gates named features
        )


@dataclass
class FidelityModel:
    """Predicted cosine of an exit's embedding to the full-depth one: w . emb + agreement_weight * cos(emb,
    previous exit's emb) + b, on the normalised embeddings (agreement_weight 0: the previous exit is not read)."""

    w: np.ndarray
    b: float
    agreement_weight: float = 0.0

    def __post_init__(self) -> None:
        self.w = np.asarray(self.w, np.float64).reshape(-1)

    @property
    def needs_previous(self) -> bool:
        return self.agreement_weight != 0.0

    def __call__(self, emb: np.ndarray, prev: np.ndarray | None = None) -> np.ndarray:
        out = np.asarray(emb, np.float64) @ self.w + self.b
        if self.needs_previous:
            out = out + self.agreement_weight * np.sum(np.asarray(emb, np.float64) * np.asarray(prev, np.float64), 1)
        return out

    def to_dict(self) -> dict:
        return {"w": self.w.tolist(), "b": float(self.b), "agreement_weight": float(self.agreement_weight)}

    @classmethod
    def from_dict(cls, d: dict) -> FidelityModel:
        return cls(np.asarray(d["w"], float), float(d["b"]), float(d.get("agreement_weight", 0.0)))


@dataclass
class ExitPolicy:
    rule: Rule
    exits: list[int]
    heads: dict[int, str]  # exit -> head IR file in the deployment folder (named by the folder's writer)
    thresholds: dict[int, float | None]
    gates: dict[int, Gate] = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # how it was calibrated, figures measured then
    predictors: dict[int, FidelityModel] = field(default_factory=dict)  # rule "fidelity": one per exit

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise OvclipError(f"unknown exit rule {self.rule!r}; known: {', '.join(RULES)}")
        if self.rule == "gate" and set(self.gates) != set(self.exits):
            raise OvclipError("a 'gate' exit policy needs one gate per exit layer")
        if self.rule == "gate" and self.exits and self.gates[self.exits[0]].needs_previous:
            raise OvclipError(f"the gate of the first exit ({self.exits[0]}) cannot use the previous exit's features")
        if self.rule == "fidelity" and set(self.predictors) != set(self.exits):
            raise OvclipError("a 'fidelity' exit policy needs one fidelity model per exit layer")
        if self.rule == "fidelity" and self.exits and self.predictors[self.exits[0]].needs_previous:
            raise OvclipError(f"the fidelity model of the first exit ({self.exits[0]}) cannot read the previous exit")

    @property
    def needs_previous(self) -> bool:
        """Whether an exit's decision uses the previous exit's outputs (heads run at every earlier exit)."""
        if self.rule == "fidelity":
            return any(p.needs_previous for p in self.predictors.values())
        return self.rule == "agreement" or (self.rule == "gate" and any(g.needs_previous for g in self.gates.values()))

    @property
    def needs_labels(self) -> bool:
        return self.rule in ("gate", "confidence")

    def head_file(self, layer: int) -> str:
        return self.heads[layer]

    def score(
        self,
        layer: int,
        scores: np.ndarray | None,
        sav: np.ndarray,
        prev: np.ndarray | None,
        emb: np.ndarray,
        prev_scores: np.ndarray | None = None,
    ) -> np.ndarray:
        """The quantity compared with the threshold (higher = more ready to exit). `prev` and `prev_scores`
        are the previous exit's embedding and class scores for the same samples (None at the first exit)."""
        if self.rule == "gate":
            return self.gates[layer](scores, sav, emb, prev, prev_scores)
        if self.rule == "confidence":
            return confidence_features(scores)[0]
        if self.rule == "fidelity":
            return self.predictors[layer](emb, prev)
        if prev is None:
            return np.full(len(emb), -np.inf)
        return np.sum(emb * prev, axis=1)

    def decide(
        self,
        layer: int,
        emb: np.ndarray,
        sav: np.ndarray,
        scores: np.ndarray | None,
        prev: np.ndarray | None,
        prev_scores: np.ndarray | None = None,
    ) -> np.ndarray:
        tau = self.thresholds.get(layer)
        if tau is None:
            return np.zeros(len(emb), bool)
        return self.score(layer, scores, sav, prev, emb, prev_scores) >= tau

    def with_thresholds(self, thresholds: dict[int, float | None]) -> ExitPolicy:
        return replace(self, thresholds=dict(thresholds))

    def with_heads(self, heads: dict[int, str]) -> ExitPolicy:
        """The same policy reading its exit heads from the files `heads` names."""
        return replace(self, heads=dict(heads))

    def to_dict(self) -> dict:
        return {
            "rule": self.rule,
            "exits": self.exits,
            "heads": {str(k): v for k, v in self.heads.items()},
            "thresholds": {str(k): v for k, v in self.thresholds.items()},
            "gates": {str(k): g.to_dict() for k, g in self.gates.items()},
            **({"predictors": {str(k): p.to_dict() for k, p in self.predictors.items()}} if self.predictors else {}),
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
                predictors={int(k): FidelityModel.from_dict(p) for k, p in d.get("predictors", {}).items()},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise OvclipError(f"the manifest's exit_policy is malformed ({e}); re-run `ovclip quantize`") from None
