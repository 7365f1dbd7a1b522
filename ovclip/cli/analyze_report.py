"""`ovclip analyze` output: a rich table per block, the rescue quadrants, and a PNG plot per block."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table


def title(result: dict) -> str:
    src = result["source"].get("description") or result["source"].get("spec")
    flag = " — RANDOM WEIGHTS (untrained)" if not result["trained"] else ""
    return f"{src}{flag}"


def subtitle(result: dict) -> str:
    im = result["images"]
    ref = result.get("fp32_variant", "fp32").upper()
    pair = f"{ref} {Path(result['fp32']).name} vs INT8 {Path(result['int8']).name}"
    return f"{pair}, {im['count']} images: {im['source']}"


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def _g(v: float | None) -> str:
    return "—" if v is None else f"{v:.3g}"


def _nan(v: float | None) -> float:
    return float("nan") if v is None else v


def blocks_table(result: dict) -> Table:
    t = Table(
        title=f"ovclip analyze: {title(result)}\n{subtitle(result)}",
        title_justify="left",
        caption="NSR (Eq. 1) and INR (Eq. 5) on the patch-token mean (CLS excluded) and on the CLS token; "
        "MSE over all tokens; cos = FP32 vs INT8 of the same image; max |a| over all tokens. "
        "Block 0 = embeddings entering block 1; stage = the INT8 folder's stage. Both folders run f32 on CPU.",
        caption_justify="left",
    )
    for col in (
        "block",
        "stage",
        "NSR mean %",
        "NSR CLS %",
        "INR mean",
        "INR CLS",
        "MSE",
        "cos CLS",
        "cos mean",
        "max|a| FP32",
        "max|a| INT8",
    ):
        t.add_column(col, justify="right")
    e = result["embeddings"]
    t.add_row(
        "0",
        "0",
        "—",
        "—",
        _g(e["inr_patch_mean"]),
        _g(e["inr_cls"]),
        _g(e["mse"]),
        f"{e['cos_cls']:.4f}",
        f"{e['cos_patch_mean']:.4f}",
        f"{e['max_abs_fp32']:.2f}",
        f"{e['max_abs_int8']:.2f}",
        style="dim",
    )
    for r in result["blocks"]:
        t.add_row(
            str(r["block"]),
            "" if r["stage"] is None else str(r["stage"]),
            _pct(r["nsr_patch_mean"]),
            _pct(r["nsr_cls"]),
            _g(r["inr_patch_mean"]),
            _g(r["inr_cls"]),
            _g(r["mse"]),
            f"{r['cos_cls']:.4f}",
            f"{r['cos_patch_mean']:.4f}",
            f"{r['max_abs_fp32']:.2f}",
            f"{r['max_abs_int8']:.2f}",
        )
    return t


def rescue_table(result: dict) -> Table | None:
    r = result.get("rescue")
    if not r:
        return None
    q = r["quadrants"]
    note = " — RANDOM WEIGHTS" if not result["trained"] else ""
    t = Table(
        title=f"rescue quadrants (paper §7): {Path(r['folder']).name}, rule {r['rule']}, exits {r['exits']}{note}",
        title_justify="left",
        caption=f"top-1 early exit {_pct(r['top1_early_exit'])}%, full depth {_pct(r['top1_full_depth'])}%; "
        f"exits taken {r['exit_histogram']}; mean exit block {r['mean_exit_block']:.2f}",
        caption_justify="left",
    )
    for col in ("outcome", "samples", "share %"):
        t.add_column(col, justify="left" if col == "outcome" else "right")
    n = q["n"] or 1
    for key, label in (
        ("both_correct", "both correct"),
        ("rescue", "rescue (EE right, full wrong)"),
        ("loss", "loss (EE wrong, full right)"),
        ("both_wrong", "both wrong"),
    ):
        t.add_row(label, str(q[key]), f"{100 * q[key] / n:.1f}")
    t.add_row("net (rescue − loss)", f"{q['net']:+d}", f"{q['net_points']:+.2f}", style="bold")
    return t


def plot(result: dict, path: Path) -> Path:
    """Three panels against the block: NSR and INR; FP32-vs-INT8 cosines; max |activation|."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["blocks"]
    e = result["embeddings"]
    blocks = [r["block"] for r in rows]
    all_blocks = [0, *blocks]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))

    ax = axes[0]
    ax.plot(blocks, [100 * r["nsr_patch_mean"] for r in rows], "o-", label="NSR patch mean")
    ax.plot(blocks, [100 * r["nsr_cls"] for r in rows], "s--", label="NSR CLS")
    ax.set_xlabel("block")
    ax.set_ylabel("NSR (Eq. 1), %")
    ax2 = ax.twinx()
    for key, style, color, label in (
        ("inr_patch_mean", "^-", "tab:green", "INR patch mean"),
        ("inr_cls", "v--", "tab:olive", "INR CLS"),
    ):
        ax2.plot(all_blocks, [_nan(e[key])] + [_nan(r[key]) for r in rows], style, color=color, label=label)
    ax2.set_yscale("log")
    ax2.set_ylabel("INR (Eq. 5), log scale")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="best")
    ax.set_title("quantization noise")

    ax = axes[1]
    ax.plot(all_blocks, [e["cos_cls"]] + [r["cos_cls"] for r in rows], "o-", label="CLS token")
    ax.plot(all_blocks, [e["cos_patch_mean"]] + [r["cos_patch_mean"] for r in rows], "s--", label="patch mean")
    ax.set_xlabel("block (0 = embeddings)")
    ax.set_ylabel("cosine FP32 vs INT8")
    ax.legend(fontsize=8)
    ax.set_title("direction kept")

    ax = axes[2]
    ax.plot(all_blocks, [e["max_abs_fp32"]] + [r["max_abs_fp32"] for r in rows], "o-", label="FP32")
    ax.plot(all_blocks, [e["max_abs_int8"]] + [r["max_abs_int8"] for r in rows], "s--", label="INT8")
    ax.set_xlabel("block (0 = embeddings)")
    ax.set_ylabel("max |activation|")
    ax.legend(fontsize=8)
    ax.set_title("activation range")

    for a in axes:
        a.set_xticks(all_blocks)
        a.grid(alpha=0.3)
    fig.suptitle(f"{title(result)}\n{subtitle(result)}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
