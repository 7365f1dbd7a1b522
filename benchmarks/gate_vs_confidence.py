"""Does the learned exit gate beat a plain confidence threshold on this model, beyond the luck of one split?

    python benchmarks/gate_vs_confidence.py --folder out/int8 --data fashion-mnist:test --draws 20

Three checks on an INT8 folder with an exit policy (its heads and exits as built; nothing is re-trained):
1. Ranking, calibration images only: per exit, the cross-validated ROC AUC with which a feature set
   predicts "this exit's top-1 is right" (logistic fit, 5 folds) on the calibration images the heads were
   not trained on. Confidence alone needs no fit. The paper's gate uses (confidence, margin, SAV); the
   agreement features (cosine to the previous exit's embedding, same top-1 as the previous exit) are
   candidates the paper does not use. The AUC of each set on --data (fit on those same calibration
   images) is shown next to it.
2. Policies over re-drawn splits: the non-head calibration images are re-split `--draws` times into gate
   and threshold parts of the build's sizes; per draw the paper's gate is fitted and thresholds are chosen
   per FLOPs budget for the gate and for confidence alone exactly as `ovclip quantize` does; accuracy and
   saving on --data. Draw 0 is the build's own split (it reproduces the folder's stored thresholds).
3. The folder's own per-budget policies: gate minus confidence accuracy on --data with a paired bootstrap
   95% interval.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import Run, table

from ovclip.bench.report import templates_for
from ovclip.data.datasets import open_dataset
from ovclip.exits.calibrate import PARETO_BUDGETS
from ovclip.exits.config import ExitBuildConfig, split_calibration
from ovclip.exits.gate_fit import cv_auc, fit_gate, fit_logistic, roc_auc, select_gate
from ovclip.exits.thresholds import for_budget, grid
from ovclip.policy.cascade import Trace, evaluate, exit_layers
from ovclip.policy.flops import flops_to_exit
from ovclip.policy.rules import PAPER_GATE_FEATURES, PREVIOUS_EXIT_FEATURES, ExitPolicy, gate_feature_values
from ovclip.policy.trace import exit_scores
from ovclip.runtime import Deployment
from ovclip.runtime.deployment import trace_vision

FEATURE_SETS = {  # display name -> `gate_feature_values` names; the candidates `select_gate` weighs
    "confidence": ("confidence",),
    "confidence+margin": ("confidence", "margin"),
    "paper (confidence+margin+SAV)": PAPER_GATE_FEATURES,
    "confidence+agreement": ("confidence", "agreement", "same_top1"),
    "paper+agreement": (*PAPER_GATE_FEATURES, "agreement", "same_top1"),
}


def traced(dep: Deployment, data, cls: np.ndarray, chunk: int = 256) -> dict:
    """Every exit head on every image: logits, SAV, embeddings per exit; full-depth correctness."""
    pol = dep.policy
    emb = {L: [] for L in pol.exits}
    sav = {L: [] for L in pol.exits}
    final = []
    for i in range(0, len(data), chunk):
        t = trace_vision(dep, data.pixels(np.arange(i, min(i + chunk, len(data))), dep.preprocess_config), pol)
        for L, (e, s) in t["heads"].items():
            emb[L].append(e)
            sav[L].append(s)
        final.append(t["final"])
    emb = {L: np.concatenate(v) for L, v in emb.items()}
    logits = {L: dep.logit_scale * e @ cls.T for L, e in emb.items()}
    labels = np.asarray(data.labels)
    return {
        "emb": emb,
        "sav": {L: np.concatenate(v).astype(np.float64) for L, v in sav.items()},
        "logits": logits,
        "correct": {L: v.argmax(1) == labels for L, v in logits.items()},
        "full_correct": (np.concatenate(final) @ cls.T).argmax(1) == labels,
    }


def subset(t: dict, idx: np.ndarray) -> dict:
    return {k: ({L: a[idx] for L, a in v.items()} if isinstance(v, dict) else v[idx]) for k, v in t.items()}


def features(t: dict, exits: list[int], L: int, names: tuple[str, ...]) -> np.ndarray:
    """Exit L's gate inputs `names` (agreement features compare with the exit before L)."""
    j = exits.index(L)
    prev = {} if j == 0 else {"prev": t["emb"][exits[j - 1]], "prev_scores": t["logits"][exits[j - 1]]}
    return gate_feature_values(names, t["logits"][L], t["sav"][L], t["emb"][L], **prev)


def ranking_table(cal: dict, test: dict, exits: list[int]) -> list[dict]:
    rows = []
    for L in exits:
        for name, cols in FEATURE_SETS.items():
            if exits.index(L) == 0 and set(cols) & set(PREVIOUS_EXIT_FEATURES):
                continue
            xc, xt = features(cal, exits, L, cols), features(test, exits, L, cols)
            yc = cal["correct"][L]
            if len(cols) == 1:
                st = xt[:, 0]
            else:
                w, b, mu, sd = fit_logistic(xc, yc)
                st = ((xt - mu) / sd) @ w + b
            rows.append(
                {
                    "exit": L,
                    "features": name,
                    "cv_auc_calibration": cv_auc(xc, yc),
                    "auc_data": roc_auc(test["correct"][L], st),
                }
            )
    return rows


def trace_of(rule: str, t: dict, exits: list[int], gates: dict, flops: dict, n_layers: int) -> Trace:
    pol = ExitPolicy(rule, exits, {}, {}, gates if rule == "gate" else {})
    sc = exit_scores(pol, t["logits"], t["sav"], t["emb"])
    return Trace(exits, sc, t["correct"], t["full_correct"], flops, n_layers)


GATES = {"paper": "paper gate", "select": "selected gate"}  # ExitBuildConfig.gate_features modes


def fit_gates(mode: str, part: dict, exits: list[int]) -> dict:
    """Per exit, the gate `ovclip quantize --gate-features MODE` fits on `part` (its previous exit fixed)."""
    gates = {}
    for j, L in enumerate(exits):
        args = (part["logits"][L], part["sav"][L], part["correct"][L])
        if mode == "paper":
            gates[L] = fit_gate(*args)
        else:
            P = exits[j - 1] if j else None
            prev = {} if P is None else {"prev": part["emb"][P], "prev_scores": part["logits"][P]}
            gates[L] = select_gate(*args, emb=part["emb"][L], **prev)[0]
    return gates


def policies(gate_part: dict, thr_part: dict, exits, flops, n_layers) -> dict[str, dict[float, dict]]:
    """Per rule ("paper", "select": the gate; "confidence") and budget, thresholds chosen on `thr_part` as
    `ovclip quantize` does (gates fitted on `gate_part`); budgets no thresholds can meet are left out."""
    out: dict[str, dict[float, dict]] = {}
    for rule in (*GATES, "confidence"):
        gates = fit_gates(rule, gate_part, exits) if rule in GATES else {}
        tr = trace_of("gate" if rule in GATES else rule, thr_part, exits, gates, flops, n_layers)
        grids = {L: grid(tr.score[L]) for L in exits}
        out[rule] = {}
        for b in PARETO_BUDGETS:
            thr, _, fl = for_budget(tr, grids, b)
            if 1 - fl / flops[n_layers] >= 1 - b - 1e-9:
                out[rule][b] = {"thresholds": thr, "gates": gates}
    return out


def on_data(rule: str, pol: dict, test: dict, exits, flops, n_layers) -> tuple[float, float, np.ndarray]:
    tr = trace_of("gate" if rule in GATES else rule, test, exits, pol["gates"], flops, n_layers)
    acc, fl, corr = evaluate(tr, pol["thresholds"])
    return acc, 1 - fl / flops[n_layers], corr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", default="out/int8")
    ap.add_argument("--calibration", default="builtin:calibration", help="the set the folder was calibrated on")
    ap.add_argument("--data", default="fashion-mnist:test")
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    run = Run("gate_vs_confidence")
    dep = Deployment(args.folder)
    assert dep.policy is not None and dep.policy.rule == "gate", f"{args.folder} has no gate exit policy"
    exits, n_layers = list(dep.policy.exits), dep.num_layers
    emb_dim = int(dep.manifest["embedding_dim"])
    cal_data, test_data = open_dataset(args.calibration), open_dataset(args.data)
    info = dep.policy.info
    if len(cal_data) != sum(info["splits"][k] for k in ("heads", "gate", "thresholds")):
        raise SystemExit(f"{args.calibration} is not the set {args.folder} was calibrated on ({info['splits']})")
    cls_cal = dep.class_embeddings(cal_data.prompt_names, info["templates"])
    cls_test = dep.class_embeddings(test_data.prompt_names, templates_for(args.data))
    cal, test = traced(dep, cal_data, cls_cal), traced(dep, test_data, cls_test)
    flops = {L: float(flops_to_exit(dep.vision, emb_dim, L, exits, len(cls_test))) for L in [*exits, n_layers]}
    cfg = ExitBuildConfig()
    _, s_gate, s_thr = split_calibration(len(cal_data), cfg)
    rest = np.concatenate([s_gate, s_thr])

    # 1. ranking quality of each feature set
    rank = ranking_table(subset(cal, rest), test, exits)
    print(
        table(
            rank,
            [
                ("exit", "exit", "d"),
                ("features", "features", "s"),
                ("cv_auc_calibration", f"CV AUC, {len(rest)} calibration images", ".4f"),
                ("auc_data", f"AUC on {len(test_data)} --data images", ".4f"),
            ],
            "Which features predict that an exit is right (higher = better ranking)",
        )
    )

    # 2. policies over re-drawn gate/threshold splits
    draws = []
    rules = (*GATES, "confidence")
    folder_mode = info.get("gate_features", {}).get("mode", "paper")
    for d in range(args.draws):
        perm = rest if d == 0 else np.random.default_rng(1000 + d).permutation(rest)
        g_idx, t_idx = perm[: len(s_gate)], perm[len(s_gate) :]
        pol = policies(subset(cal, g_idx), subset(cal, t_idx), exits, flops, n_layers)
        draws.append(
            {
                b: {r: on_data(r, pol[r][b], test, exits, flops, n_layers)[:2] for r in rules}
                for b in PARETO_BUDGETS
                if all(b in pol[r] for r in rules)
            }
        )
        budget = info["objective"].get("flops_budget")
        if d == 0 and budget in pol[folder_mode]:
            # the build traced the calibration images with FP32 text embeddings and blocks compiled in f32;
            # the folder's IRs give scores equal to ~1e-4, so compare decisions rather than thresholds
            stored = {int(k): v for k, v in info["rules"]["gate"]["thresholds"].items()}
            a = exit_layers(trace_of("gate", test, exits, dep.policy.gates, flops, n_layers), stored)
            mine = pol[folder_mode][budget]
            b = exit_layers(trace_of("gate", test, exits, mine["gates"], flops, n_layers), mine["thresholds"])
            print(
                f"draw 0 is the build's split: its {GATES[folder_mode]} policy and the folder's send "
                f"{int(np.sum(a != b))} of {len(a)} --data images to a different exit"
            )
    budgets = [b for b in PARETO_BUDGETS if all(b in r for r in draws)]
    summary = []
    for b in budgets:
        row = {"budget": b}
        for r in rules:
            row[f"{r}_top1"] = 100 * float(np.mean([x[b][r][0] for x in draws]))
            row[f"{r}_saving"] = 100 * float(np.mean([x[b][r][1] for x in draws]))
        for r in GATES:
            diff = np.array([x[b][r][0] - x[b]["confidence"][0] for x in draws])
            row[f"{r}_diff"] = 100 * float(diff.mean())
            row[f"{r}_ge"] = int(np.sum(diff >= -1e-12))
        summary.append(row)
    every = {
        r: int(sum(all(x[b][r][0] >= x[b]["confidence"][0] - 1e-12 for b in budgets) for x in draws)) for r in GATES
    }
    cols = [("budget", "budget", ".2f"), ("confidence_top1", "conf. %", ".2f"), ("confidence_saving", "saved %", ".1f")]
    for r, name in GATES.items():
        cols += [
            (f"{r}_top1", f"{name} %", ".2f"),
            (f"{r}_saving", "saved %", ".1f"),
            (f"{r}_diff", "- conf.", "+.2f"),
            (f"{r}_ge", f">= conf. (of {len(draws)})", "d"),
        ]
    print(
        table(
            summary,
            cols,
            f"Per budget on {test_data.source}: top-1 and FLOPs saved, mean over {len(draws)} gate/threshold "
            "splits of the calibration set",
        )
    )
    for r, name in GATES.items():
        print(f"{name} on or above confidence at every budget in {every[r]} of {len(draws)} draws")

    # 3. the folder's stored per-budget policies, paired bootstrap
    gates = dep.policy.gates
    rng = np.random.default_rng(0)
    boot_idx = rng.integers(0, len(test_data), (args.bootstrap, len(test_data)))
    stored_rows = []
    for row in info.get("pareto", []):
        res = {}
        for rule in ("gate", "confidence"):
            thr = {int(k): v for k, v in row[rule]["thresholds"].items()}
            res[rule] = on_data(rule, {"thresholds": thr, "gates": gates}, test, exits, flops, n_layers)
        d = res["gate"][2].astype(np.float64) - res["confidence"][2].astype(np.float64)
        boots = d[boot_idx].mean(1)
        stored_rows.append(
            {
                "budget": row["budget"],
                "gate_top1": 100 * res["gate"][0],
                "gate_saving": 100 * res["gate"][1],
                "conf_top1": 100 * res["confidence"][0],
                "conf_saving": 100 * res["confidence"][1],
                "diff": 100 * float(d.mean()),
                "lo": 100 * float(np.percentile(boots, 2.5)),
                "hi": 100 * float(np.percentile(boots, 97.5)),
                "discordant": int(np.sum(d != 0)),
            }
        )
    print(
        table(
            stored_rows,
            [
                ("budget", "budget", ".2f"),
                ("gate_top1", "gate top-1 %", ".2f"),
                ("gate_saving", "gate saving %", ".1f"),
                ("conf_top1", "conf. top-1 %", ".2f"),
                ("conf_saving", "conf. saving %", ".1f"),
                ("diff", "gate - conf.", "+.2f"),
                ("lo", "95% lo", "+.2f"),
                ("hi", "95% hi", "+.2f"),
                ("discordant", "images that differ", "d"),
            ],
            f"The folder's stored policies on {test_data.source} (paired bootstrap, {args.bootstrap} resamples)",
        )
    )
    run.data.update(
        {
            "folder": args.folder,
            "exits": exits,
            "calibration": cal_data.source,
            "data": test_data.source,
            "ranking": rank,
            "draws": [{str(b): v for b, v in r.items()} for r in draws],
            "per_budget": summary,
            "gate_on_or_above_every_budget_draws": every,
            "stored_policies": stored_rows,
        }
    )
    if args.plot:
        plot(summary, draws, budgets, Path(args.plot))
    run.finish(None if args.json is None else Path(args.json))


def plot(summary: list[dict], draws: list[dict], budgets: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for k, (r, name) in enumerate(GATES.items()):
        color = ("tab:orange", "tab:blue")[k]
        for i, b in enumerate(budgets):
            d = [100 * (x[b][r][0] - x[b]["confidence"][0]) for x in draws]
            xs = np.full(len(d), i + (k - 0.5) * 0.4) + np.linspace(-0.15, 0.15, len(d))
            ax.scatter(xs, d, s=10, alpha=0.5, color=color, label=name if i == 0 else None)
        ax.plot(
            np.arange(len(budgets)) + (k - 0.5) * 0.4,
            [s[f"{r}_diff"] for s in summary],
            "_",
            color="k",
            markersize=22,
            label="mean" if k else None,
        )
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(budgets)), [f"{b:.2f}" for b in budgets])
    ax.set_xlabel("FLOPs budget (fraction of full depth)")
    ax.set_ylabel("top-1 minus confidence-only (points)")
    ax.set_title(f"Learned gates vs a confidence threshold over {len(draws)} calibration splits")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
