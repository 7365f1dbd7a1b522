"""`precision="auto"`: measure the candidate folders on the target device and choose (`ovclip.precision.decide`);
the record the deployed folder's manifest keeps: every configuration's figures, the tolerance, the choice, why."""

from __future__ import annotations

from pathlib import Path

from ovclip.bench.runner import BenchSettings
from ovclip.data.prompts import prompt_templates
from ovclip.exits.config import ExitBuildConfig
from ovclip.precision.decide import decide, decision_record
from ovclip.precision.measure import measure_candidates
from ovclip.precision.settings import DeploySettings, measurement_split
from ovclip.progress import Progress, note
from ovclip.runtime.device import device_name


def choose_measured(
    folders: dict[str, Path],
    calibration,
    settings: DeploySettings,
    early_exit: ExitBuildConfig | None,
    progress: Progress | None = None,
) -> tuple[str, dict]:
    """(the winning candidate folder's name, the "deployed" record)."""
    data = measurement_split(calibration, early_exit)
    templates = prompt_templates((early_exit or ExitBuildConfig()).templates)
    bench = BenchSettings(
        device=settings.device,
        batch=settings.batch,
        seconds=settings.seconds,
        rounds=settings.rounds,
        pool=min(512, len(data)),
    )
    note(progress, f"precision auto: measuring {', '.join(folders)} on {settings.device}, {data.source}")
    measured, records = measure_candidates(folders, data, templates, bench, progress)
    decision = decide(measured, settings.tolerance)
    note(progress, f"precision auto: {decision.reason}")
    chosen = decision.chosen
    return chosen.folder, {
        "inference_precision": chosen.precision,
        "early_exit": chosen.early_exit,
        "chosen_by": "precision='auto' (measured)",
        "device": settings.device,
        "device_name": device_name(settings.device),
        "measured_on": {"source": data.source, "images": len(data)},
        "timing": {
            "scenario": "offline",
            "hint": bench.performance_hint,
            "batch": {name: _batch_of(records, folder) for name, folder in folders.items()},
            "nireq": records[0]["nireq"] if records else None,
            "rounds": settings.rounds,
            "seconds_per_round": settings.seconds,
        },
        "offline_batch": _batch_choice(records, folders[chosen.folder], bench.query_size),
        **decision_record(decision, measured),
    }


def _batch_of(records: list[dict], folder: Path) -> int | None:
    return next((r["batch"] for r in records if r["model"] == str(folder)), None)


def _batch_choice(records: list[dict], folder: Path, given: int) -> dict:
    """The winning folder's offline batch: as `ovclip bench` chose it (`ovclip.bench.offline_batch`), or given."""
    for r in records:
        if r["model"] == str(folder) and r.get("batch_choice"):
            return r["batch_choice"]
    return {"batch": _batch_of(records, folder) or given, "chosen_by": "given", "throughput_fps": {}}
