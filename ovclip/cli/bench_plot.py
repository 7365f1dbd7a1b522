"""`ovclip bench --plot`: accuracy vs throughput of every record, and the early-exit Pareto curve."""

from __future__ import annotations

from pathlib import Path


def plot_records(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pareto = [r for r in records if r.get("pareto")]
    fig, axes = plt.subplots(1, 2 if pareto else 1, figsize=(13 if pareto else 7, 5), squeeze=False)
    ax = axes[0][0]
    for r in records:
        label = f"{Path(r['model']).name}:{r['variant']} ({r['inference_precision']})"
        if r.get("top1") is None:
            ax.axvline(r["throughput_fps"], ls=":", color="gray")
            ax.annotate(
                label + " — no accuracy",
                (r["throughput_fps"], 0.5),
                rotation=90,
                fontsize=7,
                xycoords=("data", "axes fraction"),
            )
            continue
        ax.scatter(r["throughput_fps"], 100 * r["top1"], s=40)
        ax.annotate(
            label, (r["throughput_fps"], 100 * r["top1"]), textcoords="offset points", xytext=(4, 4), fontsize=8
        )
    dev = records[0]["device"] if records else ""
    ax.set_xlabel(f"images / s ({dev}, batch {records[0]['batch'] if records else '?'})")
    ax.set_ylabel("zero-shot top-1 (%)")
    n = next((r["n_images"] for r in records if r.get("n_images")), 0)
    ax.set_title(f"accuracy vs throughput ({n:,} images)" if n else "throughput (no accuracy)")
    ax.grid(alpha=0.3)
    if pareto:
        ax2 = axes[0][1]
        for r in pareto:
            for rule, style in (("gate", "o-"), ("confidence", "s--")):
                pts = sorted((100 * p[rule]["flops_saving"], 100 * p[rule]["top1"]) for p in r["pareto"])
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
            full = next((x for x in records if x["model"] == r["model"] and not x["variant"].endswith("-ee")), None)
            if full and full.get("top1") is not None:
                ax2.axhline(100 * full["top1"], color="gray", ls=":", label="INT8 full depth")
        ax2.set_xlabel("FLOPs saving (%)")
        ax2.set_ylabel("zero-shot top-1 (%)")
        ax2.set_title(
            "early exit: top-1 vs FLOPs saving\n(thresholds from calibration data, measured on these images)",
            fontsize=10,
        )
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
