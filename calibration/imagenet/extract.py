"""Write ovclip's ImageNet-1k class list and prompt templates from the wheels they come from (read as data).

    pip download --no-deps open_clip_torch==3.3.0 timm==1.0.31 -d /tmp/wheels
    python calibration/imagenet/extract.py /tmp/wheels/open_clip_torch-3.3.0-py3-none-any.whl \\
        /tmp/wheels/timm-1.0.31-py3-none-any.whl

- open_clip_torch (MIT): `open_clip/zero_shot_metadata.py` holds the standard CLIP ImageNet class names
  (`IMAGENET_CLASSNAMES`, in class-index order) and OpenAI's 80 prompt templates (`OPENAI_IMAGENET_TEMPLATES`)
  plus the 7-template subset (`SIMPLE_IMAGENET_TEMPLATES`). The module is parsed with `ast`, never imported.
- timm (Apache-2.0): `timm/data/_info/imagenet_synsets.txt`, the 1,000 WordNet ids of ImageNet-1k in class
  order (sorted, so sorted folder order = class index).

Writes `classes.json`, `templates.json` and the two licences into `calibration/imagenet/` and the same
files, plus the hand-written NOTICE.md, into `ovclip/assets/imagenet/` (what an installed ovclip reads).
Needs no network and no torch.
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = HERE.parent.parent / "ovclip" / "assets" / "imagenet"
OPEN_CLIP_MODULE = "open_clip/zero_shot_metadata.py"
TIMM_SYNSETS = "timm/data/_info/imagenet_synsets.txt"


def _member(wheel: zipfile.ZipFile, suffix: str) -> str:
    names = [n for n in wheel.namelist() if n.endswith(suffix)]
    if len(names) != 1:
        raise SystemExit(f"{wheel.filename}: expected one file ending in {suffix}, found {names}")
    return names[0]


def _template(node: ast.expr) -> str:
    """`lambda c: f'a photo of a {c}.'` -> 'a photo of a {}.'"""
    if not (isinstance(node, ast.Lambda) and isinstance(node.body, ast.JoinedStr)):
        raise SystemExit(f"unexpected template expression: {ast.dump(node)[:80]}")
    parts = []
    for v in node.body.values:
        if isinstance(v, ast.Constant):
            parts.append(v.value)
        elif isinstance(v, ast.FormattedValue) and isinstance(v.value, ast.Name):
            parts.append("{}")
        else:
            raise SystemExit(f"unexpected f-string part: {ast.dump(v)[:80]}")
    text = "".join(parts)
    if text.count("{}") != 1:
        raise SystemExit(f"template {text!r} must hold exactly one class-name slot")
    return text


def read_open_clip(path: Path) -> tuple[list[str], dict[str, list[str]], str]:
    with zipfile.ZipFile(path) as wheel:
        tree = ast.parse(wheel.read(OPEN_CLIP_MODULE).decode("utf-8"))
        licence = wheel.read(_member(wheel, "dist-info/licenses/LICENSE")).decode("utf-8")
    found: dict[str, ast.expr] = {
        n.targets[0].id: n.value for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Name)
    }
    names = [ast.literal_eval(e) for e in found["IMAGENET_CLASSNAMES"].elts]
    templates = {
        "openai": [_template(e) for e in found["OPENAI_IMAGENET_TEMPLATES"].elts],
        "simple": [_template(e) for e in found["SIMPLE_IMAGENET_TEMPLATES"].elts],
    }
    return names, templates, licence


def read_timm(path: Path) -> tuple[list[str], str]:
    with zipfile.ZipFile(path) as wheel:
        wnids = wheel.read(TIMM_SYNSETS).decode("ascii").split()
        licence = wheel.read(_member(wheel, "dist-info/licenses/LICENSE")).decode("utf-8")
    return wnids, licence


def write(out: Path, names: list[str], wnids: list[str], templates: dict, licences: dict[str, str], origin: dict):
    out.mkdir(parents=True, exist_ok=True)
    rows = ",\n".join(f"    {json.dumps([w, n])}" for w, n in zip(wnids, names, strict=True))
    head = json.dumps(origin, indent=2)[:-2]  # the origin object without its closing brace
    (out / "classes.json").write_text(f'{head},\n  "classes": [\n{rows}\n  ]\n}}\n', encoding="utf-8")
    (out / "templates.json").write_text(json.dumps(templates, indent=2) + "\n", encoding="utf-8")
    for name, text in licences.items():
        (out / name).write_text(text, encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("open_clip_wheel", type=Path)
    ap.add_argument("timm_wheel", type=Path)
    args = ap.parse_args()
    names, templates, oc_licence = read_open_clip(args.open_clip_wheel)
    wnids, timm_licence = read_timm(args.timm_wheel)
    if len(names) != 1000 or len(wnids) != 1000 or wnids != sorted(wnids) or len(set(wnids)) != 1000:
        raise SystemExit(f"unexpected lists: {len(names)} names, {len(wnids)} WordNet ids")
    if len(templates["openai"]) != 80:
        raise SystemExit(f"expected OpenAI's 80 templates, found {len(templates['openai'])}")
    origin = {
        "dataset": "ImageNet-1k (ILSVRC 2012): 1,000 classes, class index = sorted WordNet-id folder order",
        "names_from": f"{args.open_clip_wheel.name}:{OPEN_CLIP_MODULE} IMAGENET_CLASSNAMES (MIT, LICENSE-open_clip)",
        "wnids_from": f"{args.timm_wheel.name}:{TIMM_SYNSETS} (Apache-2.0, LICENSE-timm)",
    }
    licences = {"LICENSE-open_clip": oc_licence, "LICENSE-timm": timm_licence}
    for out in (HERE, PACKAGE):
        write(out, names, wnids, templates, licences, origin)
        if out != HERE:
            shutil.copyfile(HERE / "NOTICE.md", out / "NOTICE.md")
        print(
            f"wrote {out}: {len(wnids)} classes, templates {', '.join(f'{k} ({len(v)})' for k, v in templates.items())}"
        )


if __name__ == "__main__":
    main()
