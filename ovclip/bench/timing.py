"""Timing every prepared record of a bench run together, in rotating rounds (`ovclip.bench.rounds`): each record
gets the median and spread of its figures over the rounds and every round's figures; early-exit records get
their within-round comparison with full depth (`ovclip.bench.compare`)."""

from __future__ import annotations

from pathlib import Path

from ovclip.bench.compare import add_comparisons
from ovclip.bench.rounds import rotating_rounds, summary
from ovclip.progress import Progress, advance, note

LATENCY_KEYS = ("mean", "median", "p90", "p99", "min", "max")


def time_and_report(prepared: list, settings, progress: Progress | None) -> list[dict]:
    """Time every prepared record in `settings.rounds` rotating rounds; fill in each record's timing (median and
    spread over the rounds, every round's figures) and the within-round comparisons."""
    total = settings.rounds * len(prepared)
    task = f"timing ({settings.rounds} rounds x {len(prepared)} records)"
    done = [0]

    def runner(p):
        def once():
            k = done[0]
            tick = progress and (lambda f: advance(progress, task, (k + f) / total))
            done[0] += 1
            return p.time_once(settings.seconds, tick)

        return once

    got = rotating_rounds({i: runner(p) for i, p in enumerate(prepared)}, settings.rounds)
    for i, p in enumerate(prepared):
        _fill_timing(p.record, [t.as_dict() for t in got[i]])
    add_comparisons(prepared)
    for p in prepared:
        note(progress, _summary_line(p.record))
    return [p.record for p in prepared]


def _fill_timing(rec: dict, rounds: list[dict]) -> None:
    tp = summary([r["throughput_fps"] for r in rounds])
    rec["throughput_fps"] = tp["median"]
    rec["throughput_spread"] = tp
    rec["latency_ms"] = {k: summary([r["latency_ms"][k] for r in rounds])["median"] for k in LATENCY_KEYS}
    rec["latency_spread_ms"] = {k: summary([r["latency_ms"][k] for r in rounds]) for k in ("mean", "p90", "p99")}
    rec["rounds"] = rounds
    rec["iterations"] = sum(r["iterations"] for r in rounds)
    rec["images_timed"] = sum(r["images_timed"] for r in rounds)
    rec["seconds"] = sum(r["seconds"] for r in rounds)


def _summary_line(r: dict) -> str:
    s = r["throughput_spread"]
    line = f"{Path(r['model']).name} {r['variant']}: {s['median']:.1f} img/s (rounds {s['min']:.1f}-{s['max']:.1f})"
    if r["scenario"] != "offline":
        line += f", latency mean {r['latency_ms']['mean']:.2f} ms, p90 {r['latency_ms']['p90']:.2f} ms"
    return line
