"""Is the exit rule `ovclip quantize --exit-rule auto` picks on calibration data as good as the best candidate?

    python benchmarks/exit_rule_study.py --folder out/int8 --data fashion-mnist:test --draws 50

On an INT8 folder with exits (its heads and exits as built; nothing re-trained, the INT8 tower traced once on
the calibration and --data images and cached in --cache): the images the heads were not trained on (the pool)
are cross-fitted as the build does (`ovclip.exits.rule_select`, k folds) with `--draws` different fold
seeds. Per draw and FLOPs budget, auto picks as the build does (`rule_select.pick`: the simplest candidate not
significantly below the best out-of-fold top-1); each candidate's
deployed gates and thresholds are fitted on the whole pool (the same in every draw), so a draw's auto policy at
a budget is the picked candidate's. On --data (never read by the choice): every candidate's top-1 and saving,
the best candidate per budget, and auto minus best with a paired bootstrap 95% interval over --data images
(pooled: the per-image difference averaged over the draws; per draw: the picked candidate's interval).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from _common import Run, table
from gate_vs_confidence import traced

from ovclip.bench.report import templates_for
from ovclip.data.datasets import open_dataset
from ovclip.exits.calibrate import PARETO_BUDGETS, ExitOutputs
from ovclip.exits.config import ExitBuildConfig, split_calibration
from ovclip.exits.rule_select import CANDIDATES, budgets_objectives, cross_fit, fit_rule, pick, pool_of
from ovclip.exits.thresholds import FlopsBudget
from ovclip.policy.cascade import evaluate
from ovclip.runtime import Deployment


def outputs(t: dict) -> ExitOutputs:
    return ExitOutputs(t["emb"], t["logits"], t["correct"], t["sav"], t["full_correct"])


def load_or_trace(args, dep: Deployment) -> tuple[dict, dict]:
    """Traced calibration and --data images (every head on every image), cached as .npz."""
    cache = Path(args.cache)
    if cache.exists():
        z = np.load(cache)
        return tuple(  # type: ignore[return-value]
            {
                "emb": {L: z[f"{p}_emb_{L}"] for L in dep.policy.exits},
                "logits": {L: z[f"{p}_logits_{L}"] for L in dep.policy.exits},
                "correct": {L: z[f"{p}_correct_{L}"] for L in dep.policy.exits},
                "sav": {L: z[f"{p}_sav_{L}"] for L in dep.policy.exits},
                "full_correct": z[f"{p}_full_correct"],
            }
            for p in ("cal", "test")
        )
    info = dep.policy.info
    cal_data, test_data = open_dataset(args.calibration), open_dataset(args.data)
    cls_cal = dep.class_embeddings(cal_data.prompt_names, info["templates"])
    cls_test = dep.class_embeddings(test_data.prompt_names, templates_for(args.data))
    cal, test = traced(dep, cal_data, cls_cal), traced(dep, test_data, cls_test)
    flat = {}
    for p, t in (("cal", cal), ("test", test)):
        for key in ("emb", "logits", "correct", "sav"):
            flat |= {f"{p}_{key}_{L}": v for L, v in t[key].items()}
        flat[f"{p}_full_correct"] = t["full_correct"]
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **flat)
    return cal, test


def bootstrap(d: np.ndarray, idx: np.ndarray) -> tuple[float, float]:
    """95% interval of mean(d) over the resamples `idx` (rows), in points."""
    means = np.concatenate([d[idx[i : i + 200]].mean(1) for i in range(0, len(idx), 200)])
    return 100 * float(np.percentile(means, 2.5)), 100 * float(np.percentile(means, 97.5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", default="out/int8")
    ap.add_argument("--calibration", default="builtin:calibration", help="the set the folder was calibrated on")
    ap.add_argument("--data", default="fashion-mnist:test")
    ap.add_argument("--draws", type=int, default=50)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--cache", default="/tmp/exit_rule_study_traces.npz")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None)
    args = ap.parse_args()
    run = Run("exit_rule_study")
    dep = Deployment(args.folder)
    assert dep.policy is not None, f"{args.folder} has no exit policy"
    layers = list(dep.policy.exits)
    cal, test = load_or_trace(args, dep)
    n_cal, n_test = len(cal["full_correct"]), len(test["full_correct"])
    head_split, _, _ = split_calibration(n_cal, ExitBuildConfig())
    idx = np.setdiff1d(np.arange(n_cal), head_split)
    n_cls = next(iter(cal["logits"].values())).shape[1]
    pool = pool_of(outputs(cal), layers, dep.vision, int(dep.manifest["embedding_dim"]), n_cls)
    tpool = pool_of(outputs(test), layers, dep.vision, int(dep.manifest["embedding_dim"]), n_cls)
    full = pool.flops[pool.num_layers]
    budgets = list(PARETO_BUDGETS)
    objectives = budgets_objectives(tuple(budgets), FlopsBudget(0.85))[:-1]

    # every candidate's deployed policy per budget (fitted on the whole pool) and what it does on --data
    on_test: dict[str, list[tuple[np.ndarray, float, bool]]] = {}
    for c in CANDIDATES:
        fit = fit_rule(pool, c, idx, objectives)
        tr = tpool.trace(c, np.arange(n_test), fit.gates)
        on_test[c] = []
        for o, t in enumerate(fit.thresholds):
            _, fl, corr = evaluate(tr, t)
            on_test[c].append((corr, 1 - fl / full, bool(fit.feasible[o])))
        print(f"fitted {c} on {len(idx)} pool images", flush=True)

    # the draws: auto's pick per budget under re-drawn folds
    picks = np.empty((args.draws, len(budgets)), object)
    oof = {c: np.zeros((args.draws, len(budgets))) for c in CANDIDATES}
    for d in range(args.draws):
        fits = {c: cross_fit(pool, c, idx, objectives, args.folds, seed=d) for c in CANDIDATES}
        for o, obj in enumerate(objectives):
            picks[d, o] = pick(fits, o, full, obj)
        for c in CANDIDATES:
            oof[c][d] = fits[c].top1()
        print(f"draw {d}: {' '.join(picks[d])}", flush=True)

    boot_idx = np.random.default_rng(0).integers(0, n_test, (args.bootstrap, n_test)).astype(np.int32)
    rows = []
    for o, b in enumerate(budgets):
        feas = [c for c in CANDIDATES if on_test[c][o][2]]
        if not feas:  # no candidate meets this budget on the pool
            continue
        acc = {c: float(on_test[c][o][0].mean()) for c in feas}
        best = max(feas, key=lambda c: acc[c])
        ci = {c: bootstrap(on_test[c][o][0].astype(float) - on_test[best][o][0], boot_idx) for c in feas}
        auto = np.mean([on_test[p][o][0] for p in picks[:, o]], axis=0)  # per image, averaged over draws
        d = auto - on_test[best][o][0]
        lo, hi = bootstrap(d, boot_idx)
        share = {c: int(np.sum(picks[:, o] == c)) for c in CANDIDATES}
        rows.append(
            {
                "budget": b,
                **{f"{c}_top1": 100 * acc.get(c, np.nan) for c in CANDIDATES},
                **{f"{c}_saving": 100 * on_test[c][o][1] for c in CANDIDATES},
                **{f"{c}_picked": share[c] for c in CANDIDATES},
                **{f"{c}_ci_vs_best": ci.get(c) for c in CANDIDATES},
                **{f"{c}_oof_top1": 100 * float(oof[c][:, o].mean()) for c in CANDIDATES},
                "best": best,
                "auto_top1": 100 * float(auto.mean()),
                "auto_minus_best": 100 * float(d.mean()),
                "lo": lo,
                "hi": hi,
                "draws_significantly_below": int(sum(share[c] for c in feas if ci[c][1] < 0)),
                "picks": "/".join(f"{c[:4]}:{share[c]}" for c in CANDIDATES if share[c]),
            }
        )
    report(rows, args, n_test, len(idx), run)
    run.data.update({"folder": args.folder, "exits": layers, "pool": len(idx), "heads": len(head_split)})
    run.data.update({"per_budget": rows, "picks": picks.tolist()})
    if args.plot:
        plot(rows, Path(args.plot), args.draws)
    run.finish(None if args.json is None else Path(args.json))


def report(rows: list[dict], args, n_test: int, n_pool: int, run: Run) -> None:
    cols = [("budget", "budget", ".2f")]
    for c in CANDIDATES:
        cols += [(f"{c}_top1", f"{c} %", ".2f"), (f"{c}_saving", "saved %", ".1f")]
    print(table(rows, cols, f"Each candidate fitted on the {n_pool} pool images, top-1 on {n_test} --data images"))
    print(
        table(
            rows,
            [
                ("budget", "budget", ".2f"),
                ("picks", f"auto's picks (of {args.draws} draws)", "s"),
                ("best", "best on --data", "s"),
                ("auto_top1", "auto %", ".2f"),
                ("auto_minus_best", "auto - best", "+.2f"),
                ("lo", "95% lo", "+.2f"),
                ("hi", "95% hi", "+.2f"),
                ("draws_significantly_below", "draws sig. below", "d"),
            ],
            f"auto vs the best candidate per budget ({args.folds} folds, {args.draws} fold draws, paired bootstrap "
            f"{args.bootstrap} over --data images)",
        )
    )
    ok = all(r["lo"] <= 0 <= r["hi"] or r["lo"] > 0 for r in rows)
    print(f"auto not significantly below the best candidate at every budget: {ok}")
    run.data["auto_not_significantly_below_at_every_budget"] = ok


def plot(rows: list[dict], path: Path, draws: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = [r["budget"] for r in rows]
    for c in CANDIDATES:
        ax.plot(x, [r[f"{c}_top1"] for r in rows], "o-", ms=3, lw=1, label=c)
    ax.plot(x, [r["auto_top1"] for r in rows], "k_", ms=14, label=f"auto (mean of {draws} draws)")
    best = np.array([r[f"{r['best']}_top1"] for r in rows])
    lo, hi = best + np.array([r["lo"] for r in rows]), best + np.array([r["hi"] for r in rows])
    ax.errorbar(
        x,
        (lo + hi) / 2,
        yerr=(hi - lo) / 2,
        fmt="none",
        ecolor="k",
        capsize=3,
        label="best candidate + 95% CI of (auto - best)",
    )
    ax.invert_xaxis()
    ax.set_xlabel("FLOPs budget (fraction of full depth)")
    ax.set_ylabel("top-1 on --data (%)")
    ax.set_title("Exit rule chosen by cross-fitting vs every candidate")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
