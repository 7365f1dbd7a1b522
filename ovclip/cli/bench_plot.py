"""`ovclip bench --plot`: accuracy vs throughput of every record (error bars: the range over the rotating rounds;
a star: the deployed configuration), and the early-exit Pareto curve."""

from __future__ import annotations

from pathlib import Path


def plot_records(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pareto = [r for r in records if r.get("pareto")]
    fig, axes = plt.subplots(1, 2 if pareto else 1, figsize=(13 if pareto else 7, 5), squeeze=False)
    ax = axes[0][0]
    accuracy = any(r.get("top1") is not None for r in records)
    ylabel = "zero-shot top-1 (%)" if accuracy else "embedding cosine to FP32, mean"
    for r in records:
        label = f"{Path(r['model']).name}:{r['variant']} ({r['inference_precision']}, batch {r['batch']})"
        y = _y(r, accuracy)
        s = r.get("throughput_spread")
        if y is None:
            ax.axvline(r["throughput_fps"], ls=":", color="gray")
            if s is not None:
                ax.axvspan(s["min"], s["max"], color="gray", alpha=0.15)
            ax.annotate(
                label + " — not measured",
                (r["throughput_fps"], 0.5),
                rotation=90,
                fontsize=7,
                xycoords=("data", "axes fraction"),
            )
            continue
        xerr = None if s is None else [[r["throughput_fps"] - s["min"]], [s["max"] - r["throughput_fps"]]]
        deployed = bool(r.get("deployed"))
        ax.errorbar(
            r["throughput_fps"], y, xerr=xerr, fmt="*" if deployed else "o", ms=12 if deployed else 6, capsize=3
        )
        ax.annotate(label, (r["throughput_fps"], y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    r0 = records[0] if records else {"device": "", "scenario": ""}
    rounds = len(r0.get("rounds", []))
    ax.set_xlabel(
        f"images / s ({r0['device']}, {r0['scenario']}; median and min-max of {rounds} rotating rounds; * deployed)",
        fontsize=8,
    )
    ax.set_ylabel(ylabel)
    n = next((r["n_images"] for r in records if r.get("n_images")), 0)
    what = "accuracy" if accuracy else "embedding fidelity"
    ax.set_title(f"{what} vs throughput ({n:,} images)" if n else "throughput (nothing else measured)")
    ax.grid(alpha=0.3)
    if pareto:
        _pareto_panel(axes[0][1], pareto, records)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _y(r: dict, accuracy: bool) -> float | None:
    if accuracy:
        return None if r.get("top1") is None else 100 * r["top1"]
    f = r.get("fidelity")
    return None if not f else f["mean_cosine"]


def _pareto_panel(ax2, pareto: list[dict], records: list[dict]) -> None:
    """Top-1 vs FLOPs saving per budget, learned gate and confidence baseline; the calibrated policy starred."""
    for r in pareto:
        for rule, style in (("gate", "o-"), ("confidence", "s--")):
            pts = sorted((100 * p[rule]["flops_saving"], 100 * p[rule]["top1"]) for p in r["pareto"] if rule in p)
            if not pts:
                continue
            ax2.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                style,
                ms=4,
                label=f"{'LRA-EE learned gate' if rule == 'gate' else 'confidence-only threshold'}",
            )
        ax2.scatter(
            [100 * r["flops_saving"]],
            [100 * r["top1"]],
            marker="*",
            s=200,
            color="red",
            zorder=5,
            label="calibrated policy",
        )
        twin = r["variant"].removesuffix("-ee")
        full = next((x for x in records if x["model"] == r["model"] and x["variant"] == twin), None)
        if full and full.get("top1") is not None:
            ax2.axhline(100 * full["top1"], color="gray", ls=":", label=f"{twin} full depth")
    ax2.set_xlabel("FLOPs saving (%)")
    ax2.set_ylabel("zero-shot top-1 (%)")
    ax2.set_title(
        "early exit: top-1 vs FLOPs saving\n(thresholds from calibration data, measured on these images)",
        fontsize=10,
    )
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
