"""Bad inputs where they enter the CLI and the Python API: one clear line, a non-zero exit, nothing half-written.

The promise (ovclip.cli.common.friendly): any bad input ends in exactly one line on stderr that starts with
'error:' and names the option or file at fault, exit status 2 (a handled error, not 1 = unexpected exception),
no traceback, and no partial output folder (or JSON file) left behind. Image-decoding robustness itself is
tested in test_images.py / test_data.py and untrusted pickles in test_checkpoint.py; here the same failures
are driven through the commands a pipeline calls. A few cases run as real subprocesses, because CliRunner
cannot show what a real interpreter would print to stderr.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import build_tiny_model
from PIL import Image
from transformers import CLIPModel

from ovclip.cli import main
from ovclip.errors import OvclipError
from ovclip.runtime import Deployment, available_devices

REPO = Path(__file__).resolve().parents[1]
SOT, EOT = 49406, 49407


# --- fixtures: a tiny CLIP, its FP32 export, image folders --------------------------------------------


def save_tiny_clip(folder: Path, seed: int = 0, vision_layers: int = 4) -> CLIPModel:
    model = build_tiny_model(seed, vision_layers=vision_layers)
    model.save_pretrained(folder)
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, CLIPModel]:
    folder = tmp_path_factory.mktemp("tiny") / "clip"
    return folder, save_tiny_clip(folder)


@pytest.fixture(scope="module")
def fp32(tiny, tmp_path_factory) -> Path:
    from ovclip.checkpoint import load_checkpoint
    from ovclip.export import ExportOptions, export_deployment

    out = tmp_path_factory.mktemp("dep") / "fp32"
    export_deployment(load_checkpoint(str(tiny[0])), out, ExportOptions())
    return out


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 48, 3), np.uint8)).save(path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Data folders: good, with one broken image, empty, only junk, a class of junk; and bad checkpoints."""
    root = tmp_path_factory.mktemp("inputs")
    f = {}
    f["good"] = root / "good"
    for c in ("cat", "dog"):
        for i in range(2):
            _png(f["good"] / c / f"{i}.png", hash((c, i)) % 1000)
    f["one_broken"] = root / "one_broken"
    shutil.copytree(f["good"], f["one_broken"])
    f["broken_image"] = f["one_broken"] / "dog" / "broken.png"
    f["broken_image"].write_bytes(b"\x89PNG\r\n\x1a\n" + b"this is not really a png" * 4)
    f["empty"] = root / "empty"
    f["empty"].mkdir()
    f["junk_only"] = root / "junk_only"
    f["junk_only"].mkdir()
    (f["junk_only"] / "notes.txt").write_text("nothing to see")
    (f["junk_only"] / "Thumbs.db").write_bytes(os.urandom(64))
    f["junk_class"] = root / "junk_class"
    (f["junk_class"] / "cat").mkdir(parents=True)
    (f["junk_class"] / "cat" / "a.jpg").write_bytes(os.urandom(300))
    (f["junk_class"] / "cat" / "b.png").write_text("<html>not an image</html>")
    f["missing"] = root / "no_such_folder"
    f["markup"] = root / "[bold]deploy[/bold]"
    # checkpoints
    f["empty_file"] = root / "empty.safetensors"
    f["empty_file"].write_bytes(b"")
    f["empty_pt"] = root / "empty.pt"
    f["empty_pt"].write_bytes(b"")
    f["text_file"] = root / "README.txt"
    f["text_file"].write_text("this is a text file, not a checkpoint\n")
    f["text_as_bin"] = root / "pytorch_model.bin"
    f["text_as_bin"].write_text("this is a text file with a checkpoint's name\n")
    f["no_config"] = root / "hf_folder_without_config"
    f["no_config"].mkdir()
    (f["no_config"] / "model.safetensors").write_bytes(b"")
    return f


def _tree(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file's sha256 and mtime, to prove a folder was left untouched."""
    return {
        p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def broken_deployments(fp32, tmp_path_factory) -> dict[str, Path]:
    """Copies of the FP32 folder, each broken in one way."""
    root = tmp_path_factory.mktemp("broken")
    out = {}

    def copy(name: str) -> Path:
        out[name] = root / name
        shutil.copytree(fp32, out[name])
        return out[name]

    (copy("missing_file") / "vision_stage1.bin").unlink()
    m = copy("format_99") / "manifest.json"
    m.write_text(json.dumps({**json.loads(m.read_text()), "format_version": 99}))
    b = copy("altered_bin") / "vision_stage0.bin"
    data = bytearray(b.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit: same size, still a valid IR for read_model
    b.write_bytes(bytes(data))
    (copy("not_json") / "manifest.json").write_text("{ this is not JSON")
    (copy("binary_manifest") / "manifest.json").write_bytes(os.urandom(256))
    shutil.copy(fp32 / "text.xml", copy("stray_ir") / "old_text.xml")
    (copy("array_manifest") / "manifest.json").write_text("[]")
    (copy("null_manifest") / "manifest.json").write_text("null")
    (copy("dir_manifest") / "manifest.json").unlink()
    (out["dir_manifest"] / "manifest.json").mkdir()
    m = copy("string_version") / "manifest.json"
    m.write_text(json.dumps({**json.loads(m.read_text()), "format_version": "1"}))
    return out


# --- the promise, checked once --------------------------------------------------------------------------


def assert_one_clear_line(result, *names: str) -> str:
    """Exit 2 (handled error), last stderr line 'error: ...' naming each of `names`, no traceback."""
    err = result.stderr
    assert "Traceback" not in err and "Traceback" not in result.output, err
    assert result.exit_code == 2, f"exit {result.exit_code}; stderr:\n{err}\n{result.exception!r}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines, "nothing on stderr"
    last = lines[-1]
    print(f"\n  -> {last}")
    assert last.startswith("error: "), last
    assert sum(ln.startswith("error:") for ln in lines) == 1, err
    assert "(run with --debug" not in last, f"an unexpected exception, not a handled error: {last}"
    for name in names:
        assert str(name) in last, f"{name!r} not named in: {last}"
    return last


def no_partial_output(out: Path) -> None:
    assert not out.exists(), f"{out} left behind"
    leftovers = list(out.parent.glob(f".{out.name}.ovclip-tmp-*")) if out.parent.exists() else []
    assert not leftovers, leftovers


def run(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)


# --- the table ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    args: Callable[[dict], list]  # from the fixture paths `p` to CLI args
    names: Callable[[dict], list]  # strings the error line must contain
    out: str | None = None  # key of an output path that must not be created


BENCH = ["--time", "0.2", "--precision", "f32"]
CASES = [
    # bench: numbers
    Case("bench-batch-0", lambda p: ["bench", p["fp32"], "--batch", "0", *BENCH], lambda p: ["--batch", "0"], "json"),
    Case("bench-time-neg", lambda p: ["bench", p["fp32"], "--time", "-1"], lambda p: ["--time", "-1"], "json"),
    Case("bench-time-zero", lambda p: ["bench", p["fp32"], "--time", "0"], lambda p: ["--time"], "json"),
    Case("bench-nireq-0", lambda p: ["bench", p["fp32"], "--nireq", "0", *BENCH], lambda p: ["--nireq"], "json"),
    # bench: devices that are not here
    Case("bench-device-TPU", lambda p: ["bench", p["fp32"], "--device", "TPU", *BENCH], lambda p: ["TPU"], "json"),
    Case("bench-device-empty", lambda p: ["bench", p["fp32"], "--device", " ", *BENCH], lambda p: ["--device"], "json"),
    # bench: --data
    Case("data-empty", lambda p: ["bench", p["fp32"], "--data", p["empty"], *BENCH], lambda p: [p["empty"]], "json"),
    Case(
        "data-missing", lambda p: ["bench", p["fp32"], "--data", p["missing"], *BENCH], lambda p: [p["missing"]], "json"
    ),
    Case(
        "data-junk-only",
        lambda p: ["bench", p["fp32"], "--data", p["junk_only"], *BENCH],
        lambda p: [p["junk_only"]],
        "json",
    ),
    Case(
        "data-junk-class",
        lambda p: ["bench", p["fp32"], "--data", p["junk_class"], *BENCH],
        lambda p: [p["junk_class"] / "cat", "'cat'"],
        "json",
    ),
    Case(
        "data-broken-strict",
        lambda p: ["bench", p["fp32"], "--data", p["one_broken"], "--strict", *BENCH],
        lambda p: [p["broken_image"], "[strict mode"],
        "json",
    ),
    # inputs that look like console markup must be printed as they are, not parsed (or crash the printer)
    Case("data-markup", lambda p: ["bench", p["fp32"], "--data", "[/x]", *BENCH], lambda p: ["'[/x]'"], "json"),
    Case("verify-markup", lambda p: ["verify", p["markup"]], lambda p: [p["markup"]]),
    Case(
        "export-exits-markup",
        lambda p: ["export", "--model", p["tiny"], "--out", p["out"], "--exits", "[bold]1[/bold]"],
        lambda p: ["--exits", "'[bold]1[/bold]'"],
        "out",
    ),
    Case("data-a-file", lambda p: ["bench", p["fp32"], "--data", p["text_file"], *BENCH], lambda p: [p["text_file"]]),
    # deployment folders
    *[
        Case(
            f"{cmd}-{kind}",
            (lambda p, cmd=cmd, kind=kind: [cmd, p[kind], *(BENCH if cmd == "bench" else [])]),
            names,
            "json" if cmd == "bench" else None,
        )
        for cmd in ("bench", "verify")
        for kind, names in [
            ("missing_file", lambda p: [p["missing_file"], "vision_stage1.bin", "missing"]),
            ("format_99", lambda p: ["manifest.json", "format version 99"]),
            ("altered_bin", lambda p: ["vision_stage0.bin", "sha256"]),
            ("not_json", lambda p: [p["not_json"] / "manifest.json", "unreadable manifest"]),
            ("binary_manifest", lambda p: [p["binary_manifest"] / "manifest.json"]),
            ("array_manifest", lambda p: [p["array_manifest"] / "manifest.json", "not an ovclip manifest"]),
            ("null_manifest", lambda p: [p["null_manifest"] / "manifest.json", "not an ovclip manifest"]),
            ("dir_manifest", lambda p: [p["dir_manifest"] / "manifest.json", "unreadable manifest"]),
            ("string_version", lambda p: ["manifest.json", "format version '1'"]),
        ]
    ],
    Case("verify-stray-ir", lambda p: ["verify", p["stray_ir"]], lambda p: ["old_text.xml", "unexpected IR file"]),
    Case("verify-no-folder", lambda p: ["verify", p["missing"]], lambda p: [p["missing"]]),
    Case("verify-not-a-deployment", lambda p: ["verify", p["good"]], lambda p: [p["good"], "manifest.json"]),
    # export
    *[
        Case(
            f"export-exits-{spec}",
            lambda p, spec=spec: ["export", "--model", p["tiny"], "--out", p["out"], "--exits", spec],
            lambda p, spec=spec: ["--exits", spec],
            "out",
        )
        for spec in ("0", "99", "abc", "-1")
    ],
    Case(
        "export-static-batch-0",
        lambda p: ["export", "--model", p["tiny"], "--out", p["out"], "--static-batch", "0"],
        lambda p: ["--static-batch"],
        "out",
    ),
    *[
        Case(
            f"export-model-{kind}",
            lambda p, kind=kind: ["export", "--model", p[kind], "--out", p["out"]],
            lambda p, kind=kind: [p[kind]],
            "out",
        )
        for kind in ("empty_file", "empty_pt", "text_file", "text_as_bin", "no_config", "missing", "empty")
    ],
    # quantize: options are checked before anything is loaded or written
    Case(
        "quantize-subset-0",
        lambda p: ["quantize", "--model", p["tiny"], "--out", p["out"], "--subset-size", "0"],
        lambda p: ["--subset-size", "0"],
        "out",
    ),
    Case(
        "quantize-subset-neg",
        lambda p: ["quantize", "--model", p["tiny"], "--out", p["out"], "--subset-size", "-5"],
        lambda p: ["--subset-size"],
        "out",
    ),
    *[
        Case(
            f"quantize-smooth-quant-{a}",
            lambda p, a=a: ["quantize", "--model", p["tiny"], "--out", p["out"], "--smooth-quant", a],
            lambda p, a=a: ["--smooth-quant", a],
            "out",
        )
        for a in ("1.5", "abc", "0", "-0.5", "nan")
    ],
]


@pytest.fixture(scope="module")
def paths(tiny, fp32, folders, broken_deployments, tmp_path_factory) -> dict:
    return {"tiny": tiny[0], "fp32": fp32, **folders, **broken_deployments}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_one_clear_line(case: Case, paths, tmp_path):
    p = {**paths, "out": tmp_path / "written" / "dep", "json": tmp_path / "records.json"}
    args = case.args(p)
    if case.out == "json":
        args += ["--json", p["json"]]
    result = run(*args)
    assert_one_clear_line(result, *case.names(p))
    if case.out is not None:
        no_partial_output(p[case.out])


@pytest.mark.skipif("NPU" in available_devices(), reason="an NPU is present here")
def test_bench_absent_npu_names_what_is_there(paths, tmp_path):
    result = run("bench", paths["fp32"], "--device", "NPU", *BENCH, "--json", tmp_path / "r.json")
    line = assert_one_clear_line(result, "NPU", "CPU")  # names the device asked for and what OpenVINO sees
    assert "not available" in line
    assert not (tmp_path / "r.json").exists()


def test_export_into_existing_folder_needs_overwrite(paths, tmp_path):
    out = tmp_path / "dep"
    shutil.copytree(paths["fp32"], out)
    (out / "my_notes.txt").write_text("keep me")
    before = _tree(out)
    result = run("export", "--model", paths["tiny"], "--out", out)
    assert_one_clear_line(result, "--overwrite", out)
    assert _tree(out) == before
    assert not list(tmp_path.glob(".dep.ovclip-tmp-*"))


@pytest.mark.parametrize("command", ["export", "quantize"])
def test_existing_out_is_refused_before_the_checkpoint_is_read(paths, tmp_path, command):
    """No minutes of loading and calibrating before the refusal: a missing model is not even looked at."""
    out = tmp_path / "dep"
    shutil.copytree(paths["fp32"], out)
    result = run(command, "--model", tmp_path / "no-such-model", "--out", out)
    line = assert_one_clear_line(result, "--overwrite", out)
    assert "no-such-model" not in line


@pytest.mark.parametrize(
    "files",
    [{"docs/thesis.txt": "years of work"}, {"manifest.json": '{"name": "my web app"}', "index.html": "<html>"}],
    ids=["user-files", "web-app-manifest"],
)
def test_overwrite_never_deletes_a_folder_that_is_not_a_deployment(paths, tmp_path, files):
    """`--out . --overwrite` (or a typo) must not replace the working folder or any other folder of files."""
    out = tmp_path / "mine"
    for name, text in files.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    before = _tree(out)
    result = run("export", "--model", paths["tiny"], "--out", out, "--overwrite")
    assert_one_clear_line(result, out, "not an ovclip deployment folder", "--overwrite")
    assert _tree(out) == before
    assert not list(tmp_path.glob(".mine.ovclip-tmp-*"))


def test_overwrite_repairs_a_damaged_deployment(paths, broken_deployments, tmp_path):
    """The errors say 're-export the folder': --overwrite must be able to replace a damaged one."""
    out = tmp_path / "dep"
    shutil.copytree(broken_deployments["not_json"], out)
    result = run("export", "--model", paths["tiny"], "--out", out, "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert run("verify", out).exit_code == 0


def test_export_out_is_a_file(paths, tmp_path):
    out = tmp_path / "dep"
    out.write_text("a file where the folder should go")
    assert_one_clear_line(run("export", "--model", paths["tiny"], "--out", out, "--overwrite"), out)
    assert out.read_text() == "a file where the folder should go"


def test_one_broken_image_is_skipped_and_counted(paths, tmp_path):
    js = tmp_path / "records.json"
    result = run("bench", paths["fp32"], "--data", paths["one_broken"], *BENCH, "--json", js)
    assert result.exit_code == 0, result.stderr
    assert "skipped 1 unreadable images" in result.stderr
    assert "broken.png" in result.stderr
    records = json.loads(js.read_text())
    assert records and all(r["n_images"] == 4 for r in records)  # the four good images were evaluated
    assert "1 skipped" in records[0]["data"]


def test_verify_accepts_a_good_folder(paths):
    result = run("verify", paths["fp32"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "ok"
    assert "sha256 match" in result.stdout and "read by OpenVINO" in result.stdout


def test_verify_reports_every_problem_in_json(paths, broken_deployments, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(broken_deployments["altered_bin"], bad)
    (bad / "tokenizer_config.json").unlink()
    (bad / "stray.bin").write_bytes(b"\0" * 16)
    result = run("verify", "--json", bad)
    assert result.exit_code == 2
    report = json.loads(result.stdout)
    assert not report["ok"] and len(report["problems"]) == 3
    joined = " ".join(report["problems"])
    assert "vision_stage0.bin" in joined and "tokenizer_config.json" in joined and "stray.bin" in joined
    line = assert_one_clear_line(result, "+2 more problems")
    assert any(name in line for name in ("vision_stage0.bin", "tokenizer_config.json", "stray.bin"))


# --- the library function behind `verify`: structure errors no checksum can catch ----------------------


def _rewrite(folder: Path, edit) -> None:
    """Edit the manifest and re-sign it (write_manifest recomputes every sha256), as a buggy writer would."""
    from ovclip.folder import write_manifest

    data = json.loads((folder / "manifest.json").read_text())
    edit(data)
    write_manifest(folder, data)


@pytest.mark.parametrize(
    "edit, expect",
    [
        (lambda d: d["vision"]["stages"][1]["blocks"].__setitem__(0, 5), "expected 4"),
        (lambda d: d["vision"]["stages"][0]["blocks"].__setitem__(0, 2), "starts at block 2, expected 1"),
        (lambda d: d["vision"].__setitem__("num_layers", 6), "tower has 6 blocks"),
        (lambda d: d["vision"].__setitem__("exits", [2]), "do not match the stage splits"),
        (lambda d: d["vision"].__setitem__("image_size", 96), "input shape"),
        (lambda d: d.__setitem__("embedding_dim", 16), "output shape"),
        (lambda d: d["vision"]["stages"].reverse(), "starts at block 4"),
        (lambda d: d.pop("vision"), "no 'vision'"),
        (
            lambda d: d.__setitem__(
                "exit_policy", {"rule": "confidence", "exits": [3], "heads": {"3": "exit_head_3.xml"}, "thresholds": {}}
            ),
            "exit_head_3.xml",
        ),
        (
            lambda d: d.__setitem__(
                "exit_policy", {"rule": "confidence", "exits": [2], "heads": {"2": "text.xml"}, "thresholds": {}}
            ),
            "not a vision stage boundary",
        ),
        (lambda d: d.__setitem__("exit_policy", {"rule": "magic", "exits": [3]}), "exit_policy"),
    ],
    ids=[
        "gap",
        "not-from-1",
        "short",
        "exits-vs-stages",
        "image-size",
        "embedding-dim",
        "reversed",
        "no-vision",
        "missing-head",
        "exit-not-a-boundary",
        "bad-rule",
    ],
)
def test_verify_structure(fp32, tmp_path, edit, expect):
    from ovclip.verify import check_deployment, verify_deployment

    folder = tmp_path / "dep"
    shutil.copytree(fp32, folder)
    _rewrite(folder, edit)
    report = verify_deployment(folder)
    assert not report.ok
    assert any(expect in p for p in report.problems), report.problems
    with pytest.raises(OvclipError):
        check_deployment(folder)


@pytest.mark.parametrize("name", ["../outside.bin", "/etc/hostname", "sub/../../x.xml", "C:\\x.bin"])
def test_verify_refuses_names_outside_the_folder(fp32, tmp_path, name):
    """A hand-edited manifest must not make verify (or the runtime) read files outside the folder."""
    from ovclip.verify import verify_deployment

    folder = tmp_path / "dep"
    shutil.copytree(fp32, folder)
    m = folder / "manifest.json"
    data = json.loads(m.read_text())
    data["files"][name] = "0" * 64
    m.write_text(json.dumps(data))
    report = verify_deployment(folder)
    assert not report.ok and "not a file name inside the folder" in report.problems[0]


def test_verify_needs_the_checksum_list(fp32, tmp_path):
    """Without 'files' there is nothing to check the IRs against: verify says so (read_manifest does not)."""
    from ovclip.verify import verify_deployment

    folder = tmp_path / "dep"
    shutil.copytree(fp32, folder)
    m = folder / "manifest.json"
    data = json.loads(m.read_text())
    del data["files"]
    m.write_text(json.dumps(data))
    report = verify_deployment(folder)
    assert not report.ok and "no 'files'" in report.problems[0]


# --- real processes: nothing but the one line reaches stderr -------------------------------------------


@pytest.mark.parametrize(
    "args, name",
    [
        (lambda p: ["bench", p["fp32"], "--batch", "0"], "--batch"),
        (lambda p: ["verify", p["altered_bin"]], "vision_stage0.bin"),
        (lambda p: ["bench", p["not_json"], "--time", "0.1"], "manifest.json"),
    ],
    ids=["bench-batch-0", "verify-altered", "bench-not-json"],
)
def test_subprocess_stderr_is_one_line(paths, args, name):
    cmd = [sys.executable, "-m", "ovclip.cli", *map(str, args(paths))]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and name in lines[0], proc.stderr


def test_debug_shows_the_traceback(paths):
    """--debug is the way to the traceback: the error line is still last."""
    result = run("--debug", "verify", paths["altered_bin"])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


# --- Python API: texts of any shape ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def dep(fp32) -> Deployment:
    return Deployment(fp32)


def _torch_text(model: CLIPModel, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model.get_text_features(input_ids=torch.from_numpy(ids))
    out = out if isinstance(out, torch.Tensor) else out.pooler_output
    out = out.numpy()
    return out / np.linalg.norm(out, axis=-1, keepdims=True)


def test_encode_empty_string_is_sot_eot(dep, tiny):
    ids = dep.tokenizer([""])
    assert ids[0, :2].tolist() == [SOT, EOT] and not ids[0, 2:].any()
    emb = dep.encode_text("")
    assert emb.shape == (1, 32) and np.isfinite(emb).all()
    np.testing.assert_allclose(emb, _torch_text(tiny[1], ids), atol=1e-4)


def test_encode_very_long_string_is_truncated(dep, tiny):
    text = ("a photo of a very long caption " * 400)[:10_000]
    ids = dep.tokenizer([text])
    assert (ids[0] != 0).all() and ids[0, 0] == SOT and ids[0, -1] == EOT  # 77 tokens, EOT kept
    emb = dep.encode_text([text])
    np.testing.assert_allclose(emb, _torch_text(tiny[1], ids), atol=1e-4)
    # everything past the 75th token is dropped: a different tail gives the same embedding
    np.testing.assert_allclose(emb, dep.encode_text([text[:5000] + "zebra " * 900]), atol=1e-6)


UNICODE = [
    "日本語のキャプション",
    "🚀🐈‍⬛👩🏽‍🚀 emoji",
    "مرحبا بالعالم",
    "e\u0301 combining, ﬁ ligature, Ａ fullwidth",
    "\u200b\u200d\ufeff zero-width",
    "\x00\x01\x7f control",
    "\ud800 lone surrogate",
    "<|endoftext|> <|startoftext|>",
    "   \t\n  ",
    "&amp;lt;html&gt;",
    "\U0010ffff",
]


def test_encode_any_unicode(dep):
    emb = dep.encode_text(UNICODE)
    assert emb.shape == (len(UNICODE), 32)
    assert np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # one at a time gives the same rows (no cross-talk between texts of a batch)
    np.testing.assert_allclose(np.concatenate([dep.encode_text(t) for t in UNICODE]), emb, atol=1e-6)


def test_encode_nothing_is_an_error(dep):
    with pytest.raises(OvclipError, match="no text"):
        dep.encode_text([])


def test_deployment_survives_folder_swap(tiny, fp32, tmp_path):
    """A pipeline holds a Deployment while a new export replaces its folder: it keeps serving the old model.

    The new folder holds another model (other random weights, another split), so serving the new files by
    mistake would change the embeddings far beyond the tolerance."""
    from ovclip.checkpoint import load_checkpoint
    from ovclip.export import ExportOptions, export_deployment

    save_tiny_clip(tmp_path / "other-clip", seed=1)
    ckpt = load_checkpoint(str(tmp_path / "other-clip"))
    folder = tmp_path / "dep"
    shutil.copytree(fp32, folder)  # split after block 3 (the default for 4 blocks)
    assert [s["blocks"] for s in json.loads((folder / "manifest.json").read_text())["vision"]["stages"]] == [
        [1, 3],
        [4, 4],
    ]
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    dep = Deployment(folder)
    before = Deployment(folder).run_vision(x).embeddings
    export_deployment(ckpt, folder, ExportOptions(exits="1,2", overwrite=True))  # other weights, another split
    np.testing.assert_allclose(dep.run_vision(x).embeddings, before, atol=1e-5)
    swapped = Deployment(folder).run_vision(x).embeddings  # the folder on disk now holds the other model
    assert np.abs(swapped - before).max() > 0.1
