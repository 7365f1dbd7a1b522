"""Is this deployment folder exactly what its manifest says, and loadable?

An edge pipeline runs it before swapping a new folder in (and a CI job after writing one). Checks, in order:

1. the manifest: present, JSON, an ovclip manifest of a format version this ovclip reads, with the keys
   the runtime needs;
2. files: every file the manifest lists is present (inside the folder) with a matching sha256, every file
   the runtime opens is among them, and no IR file (.xml/.bin) lies there that the manifest does not list;
3. IR: every listed .xml is read by ``openvino.Core().read_model`` (with its weights), and its static
   input/output dimensions agree with the manifest (image size, tokens, widths, embedding size);
4. stages: the vision stages cover blocks 1..N contiguously, in order, and split exactly at the exits;
5. exit policy: each policy parses, its exits are stage boundaries, and each exit's head IR is listed;
6. tokenizer and preprocessing config load.

`verify_deployment` collects every problem it finds into a `VerifyReport` (it does not raise for a bad
folder); `check_deployment` raises `OvclipError` naming the first problem. `ovclip verify DIR` (ovclip.cli.verify)
prints a short report and exits 0, or one ``error:`` line and a non-zero exit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ovclip.errors import OvclipError, first_line

IR_SUFFIXES = (".xml", ".bin")
REQUIRED = {
    "variant": str,
    "embedding_dim": int,
    "logit_scale": (int, float),
    "vision": dict,
    "text": dict,
    "files": dict,
}
REQUIRED_VISION = {"num_layers": int, "hidden_size": int, "image_size": int, "tokens": int, "stages": list}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class VerifyReport:
    folder: Path
    checks: list[Check] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    manifest: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, name: str, problems: list[str], detail: str) -> None:
        self.problems += problems
        self.checks.append(Check(name, not problems, problems[0] if problems else detail))

    def as_dict(self) -> dict:
        return {
            "folder": str(self.folder),
            "ok": self.ok,
            "problems": list(self.problems),
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
        }

    def first_error(self) -> str:
        more = len(self.problems) - 1
        return self.problems[0] + (f" (+{more} more problem{'s' if more > 1 else ''})" if more > 0 else "")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _type_ok(v: Any, t) -> bool:
    if t is int:
        return _is_int(v)
    if t == (int, float):
        return (_is_int(v) or isinstance(v, float)) and not isinstance(v, bool)
    return isinstance(v, t)


def _safe_name(name: str) -> bool:
    """A manifest entry must name a file inside the folder: relative, no '..', no drive or backslash tricks."""
    p = PurePosixPath(name)
    return bool(name) and not p.is_absolute() and ".." not in p.parts and "\\" not in name and ":" not in name


def _structure(folder: Path, data: dict) -> list[str]:
    out = []
    for key, t in REQUIRED.items():
        if key not in data:
            out.append(f"{folder}: manifest has no {key!r}; re-export the folder")
        elif not _type_ok(data[key], t):
            out.append(f"{folder}: manifest {key!r} is {type(data[key]).__name__}, not {getattr(t, '__name__', t)}")
    if out:
        return out
    for key, t in REQUIRED_VISION.items():
        if not _type_ok(data["vision"].get(key), t):
            out.append(f"{folder}: manifest vision.{key} is missing or not a {t.__name__}; re-export the folder")
    if not isinstance(data["text"].get("file"), str):
        out.append(f"{folder}: manifest text.file is missing; re-export the folder")
    for name, digest in data["files"].items():
        if not _safe_name(name):
            out.append(f"{folder}: manifest lists {name!r}, which is not a file name inside the folder")
        elif not (isinstance(digest, str) and len(digest) == 64):
            out.append(f"{folder}: manifest sha256 of {name} is malformed")
    for i, st in enumerate(data["vision"].get("stages") or []):
        if not (
            isinstance(st, dict)
            and isinstance(st.get("file"), str)
            and isinstance(st.get("blocks"), list)
            and len(st["blocks"]) == 2
            and all(_is_int(b) for b in st["blocks"])
        ):
            out.append(f"{folder}: manifest vision.stages[{i}] is malformed (needs 'file' and 'blocks': [first, last])")
    return out


def _stages(folder: Path, vision: dict) -> tuple[list[str], str]:
    n = vision["num_layers"]
    stages = vision["stages"]
    if not stages:
        return [f"{folder}: manifest has no vision stages"], ""
    out, expect = [], 1
    for i, st in enumerate(stages):
        a, b = st["blocks"]
        if a != expect:
            out.append(
                f"{folder}: vision stage {i} ({st['file']}) starts at block {a}, expected {expect}: "
                "stages must cover blocks 1..N contiguously"
            )
        if b < a:
            out.append(f"{folder}: vision stage {i} ({st['file']}) has blocks {a}..{b} (empty or reversed)")
        expect = b + 1
    if stages[-1]["blocks"][1] != n:
        out.append(f"{folder}: vision stages end at block {stages[-1]['blocks'][1]}, but the tower has {n} blocks")
    files = [st["file"] for st in stages]
    if len(set(files)) != len(files):
        out.append(f"{folder}: two vision stages share one IR file")
    cuts = [st["blocks"][1] for st in stages[:-1]]
    exits = vision.get("exits")
    if exits is not None and list(exits) != cuts:
        out.append(f"{folder}: manifest exits {exits} do not match the stage splits {cuts}")
    desc = " | ".join(f"{st['blocks'][0]}-{st['blocks'][1]}" for st in stages) + f" of {n}"
    return out, desc


def _policies(folder: Path, data: dict, listed: set[str]) -> tuple[list[str], list[str], str]:
    """Problems, head files referenced, description."""
    from ovclip.policy.rules import ExitPolicy

    out: list[str] = []
    heads: list[str] = []
    desc: list[str] = []
    cuts = {st["blocks"][1] for st in data["vision"]["stages"][:-1]}
    for key in ("exit_policy", "exit_policy_embedding"):
        raw = data.get(key)
        if not raw:
            continue
        if not isinstance(raw, dict):
            out.append(f"{folder}: manifest {key} is not an object; re-run `ovclip quantize`")
            continue
        try:
            policy = ExitPolicy.from_dict(raw)
        except OvclipError as e:
            out.append(f"{folder}: {key}: {e}")
            continue
        for layer in policy.exits:
            if layer not in cuts:
                out.append(
                    f"{folder}: {key} exits after block {layer}, which is not a vision stage boundary {sorted(cuts)}"
                )
            head = policy.heads.get(layer)
            if head is None:
                out.append(f"{folder}: {key} has no exit head for block {layer}")
                continue
            heads.append(head)
            if head not in listed:
                out.append(f"{folder}: {key} uses exit head {head} for block {layer}, which the manifest does not list")
        extra = sorted(set(policy.thresholds) - set(policy.exits))
        if extra:
            out.append(f"{folder}: {key} has thresholds for blocks {extra} that are not among its exits")
        desc.append(f"{policy.rule} at {policy.exits}")
    return out, heads, ", ".join(desc) or "none"


def _dims(partial_shape) -> list[int | None]:
    return [None if d.is_dynamic else d.get_length() for d in partial_shape]


def _shape_problems(name: str, model, want_in: list[int | None] | None, want_out: list[int | None] | None) -> list[str]:
    """Compare static dims of the first input/output with what the manifest implies (None = any)."""
    out = []
    for what, port, want in (("input", model.inputs, want_in), ("output", model.outputs, want_out)):
        if want is None or not port:
            continue
        ps = port[0].get_partial_shape()
        if ps.rank.is_dynamic:
            continue
        got = _dims(ps)
        if len(got) != len(want) or any(w is not None and g not in (None, w) for g, w in zip(got, want, strict=True)):
            shown = [("?" if g is None else g) for g in got]
            expected = [("?" if w is None else w) for w in want]
            out.append(f"{name}: {what} shape {shown} does not match the manifest (expected {expected})")
    return out


def _expected_shapes(data: dict) -> dict[str, tuple[list | None, list | None]]:
    v = data["vision"]
    s, t, d, e = v["image_size"], v["tokens"], v["hidden_size"], data["embedding_dim"]
    ctx = data["text"].get("context_length")
    want: dict[str, tuple[list | None, list | None]] = {}
    for st in v["stages"]:
        first, last = st["blocks"][0] == 1, st["blocks"][1] == v["num_layers"]
        want[st["file"]] = ([None, 3, s, s] if first else [None, t, d], [None, e] if last else [None, t, d])
    want[data["text"]["file"]] = ([None, ctx if _is_int(ctx) else None], [None, e])
    for key in ("exit_policy", "exit_policy_embedding"):
        for head in ((data.get(key) or {}).get("heads") or {}).values():
            if isinstance(head, str):
                want[head] = ([None, t, d], [None, e])
    return want


def verify_deployment(folder: str | Path, *, read_ir: bool = True) -> VerifyReport:
    """Check a deployment folder against its manifest; every problem found is in `report.problems`."""
    folder = Path(folder)
    report = VerifyReport(folder)
    data = _check_manifest(folder, report)
    if data is None:
        return report
    policy_problems, head_files, policy_desc = _policies(folder, data, set(data["files"]))
    bad = _check_files(folder, data, head_files, report)
    if read_ir:
        _check_ir(folder, data, bad, report)
    problems, desc = _stages(folder, data["vision"])
    report.add("stages", problems, f"blocks {desc}" + (f", exits after {data['vision'].get('exits')}" if desc else ""))
    report.add("exit policy", policy_problems, policy_desc)
    report.add(
        "tokenizer/preprocess", _tokenizer_problems(folder, data, bad) + _preprocess_problems(folder, data, bad), "load"
    )
    return report


def _check_manifest(folder: Path, report: VerifyReport) -> dict | None:
    """The manifest's data when it reads and has the structure the runtime needs; else None (problems added)."""
    from ovclip.folder.manifest import read_manifest

    try:
        manifest = read_manifest(folder, verify=False)
    except OvclipError as e:
        report.add("manifest", [str(e)], "")
        return None
    data = manifest.data
    report.manifest = data
    problems = _structure(folder, data)
    source = (data.get("source") or {}).get("description") if isinstance(data.get("source"), dict) else None
    detail = f"format {data['format_version']}, variant {data.get('variant')}" + (f", {source}" if source else "")
    report.add("manifest", problems, detail)
    return None if problems else data


def _check_files(folder: Path, data: dict, head_files: list[str], report: VerifyReport) -> set[str]:
    """Listed files present and intact, files the runtime opens listed, no stray IR. Returns the bad files."""
    problems, bad = _integrity(folder, data["files"])
    problems += _unlisted_needed(folder, data, head_files) + _stray_ir(folder, set(data["files"]))
    extra = _other_unlisted(folder, set(data["files"]))
    s = "s" if len(extra) > 1 else ""
    detail = f"{len(data['files'])} present, sha256 match, no unexpected IR files"
    report.add(
        "files", problems, detail + (f" ({len(extra)} other unlisted file{s}: {', '.join(extra[:3])})" if extra else "")
    )
    return bad


def _integrity(folder: Path, files: dict[str, str]) -> tuple[list[str], set[str]]:
    """Problems and names of listed files that are missing or do not match their sha256."""
    from ovclip.folder.manifest import sha256

    problems, bad = [], set()
    for name, digest in files.items():
        p = folder / name
        if not p.is_file():
            problems.append(f"{folder}: file {name} listed in the manifest is missing; re-export the folder")
            bad.add(name)
        elif sha256(p) != digest:
            problems.append(
                f"{folder}: {name} does not match its sha256 in the manifest (altered or corrupt); re-export the folder"
            )
            bad.add(name)
    return problems, bad


def _unlisted_needed(folder: Path, data: dict, head_files: list[str]) -> list[str]:
    """Files the runtime opens (stage, text and head IRs with their weights, tokenizer, preprocessing) that the
    manifest does not checksum."""
    needed = [*(st["file"] for st in data["vision"]["stages"]), data["text"]["file"], *head_files]
    needed += [str(PurePosixPath(f).with_suffix(".bin")) for f in needed]
    needed += ["tokenizer.json", "preprocessor_config.json"]
    return [
        f"{folder}: {name} is used by the runtime but not listed (checksummed) in the manifest"
        for name in dict.fromkeys(needed)
        if name not in data["files"]
    ]


def _stray_ir(folder: Path, listed: set[str]) -> list[str]:
    stray = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.suffix.lower() in IR_SUFFIXES and p.is_file() and p.relative_to(folder).as_posix() not in listed
    )
    return [
        f"{folder}: unexpected IR file {name} is not in the manifest; remove it or re-export the folder"
        for name in stray
    ]


def _other_unlisted(folder: Path, listed: set[str]) -> list[str]:
    """Unlisted files that are neither IR nor the manifest (reported, not a problem)."""
    from ovclip.folder.manifest import MANIFEST

    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file()
        and p.name != MANIFEST
        and p.suffix.lower() not in IR_SUFFIXES
        and p.relative_to(folder).as_posix() not in listed
    )


def _check_ir(folder: Path, data: dict, bad: set[str], report: VerifyReport) -> None:
    """Every intact listed .xml is read by OpenVINO, with the static shapes the manifest promises."""
    import openvino as ov

    from ovclip.runtime.device import core

    xmls = [n for n in data["files"] if n.lower().endswith(".xml") and n not in bad]
    problems = []
    want = _expected_shapes(data)
    read = 0
    for name in xmls:
        if str(PurePosixPath(name).with_suffix(".bin")) in bad:
            continue
        try:
            model = core().read_model(str(folder / name))
        except Exception as e:  # noqa: BLE001 - RuntimeError from the IR reader, whatever its wording
            problems.append(f"{folder}: OpenVINO cannot read {name} ({first_line(e)}); re-export the folder")
            continue
        read += 1
        if name in want:
            problems += [f"{folder}: {p}" for p in _shape_problems(name, model, *want[name])]
    report.add("IR", problems, f"{read} of {len(xmls)} read by OpenVINO {ov.get_version().split('-')[0]}")


def _tokenizer_problems(folder: Path, data: dict, bad: set[str]) -> list[str]:
    """The tokenizer loads and tokenizes (its bytes are already checked)."""
    if "tokenizer.json" in bad or not (folder / "tokenizer.json").is_file():
        return []
    try:
        from ovclip.tokenizer import ClipTokenizer

        tok = ClipTokenizer.from_file(folder / "tokenizer.json", data["text"].get("context_length", 77))
        tok("a photo")
    except Exception as e:  # noqa: BLE001
        return [f"{folder}: tokenizer.json does not load ({type(e).__name__}: {str(e)[:120]})"]
    return []


def _preprocess_problems(folder: Path, data: dict, bad: set[str]) -> list[str]:
    """The preprocessing config loads and crops to the vision tower's input size."""
    if "preprocessor_config.json" in bad or not (folder / "preprocessor_config.json").is_file():
        return []
    try:
        from ovclip.preprocess import PreprocessConfig

        cfg = PreprocessConfig.load(folder / "preprocessor_config.json")
    except Exception as e:  # noqa: BLE001
        return [f"{folder}: preprocessor_config.json does not load ({type(e).__name__}: {str(e)[:120]})"]
    if cfg.size != data["vision"]["image_size"]:
        return [
            f"{folder}: preprocessor_config.json crops to {cfg.size}px but the vision tower takes "
            f"{data['vision']['image_size']}px"
        ]
    return []


def check_deployment(folder: str | Path, *, read_ir: bool = True) -> VerifyReport:
    """`verify_deployment`, raising OvclipError with the first problem when the folder is not good."""
    report = verify_deployment(folder, read_ir=read_ir)
    if not report.ok:
        raise OvclipError(report.first_error())
    return report
