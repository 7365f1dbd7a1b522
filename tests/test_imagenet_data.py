"""ImageNet layout: the shipped class list and templates, and WordNet-id folders read as ImageNet classes."""

from __future__ import annotations

import importlib.util
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ovclip.data.datasets import image_folder, open_dataset
from ovclip.data.imagenet import (
    ASSET_DIR,
    imagenet_classes,
    imagenet_layout,
    imagenet_templates,
    is_imagenet_folder,
)
from ovclip.errors import OvclipError

REPO = Path(__file__).resolve().parent.parent
SOURCE_DIR = REPO / "calibration" / "imagenet"


def _extract_module():
    spec = importlib.util.spec_from_file_location("imagenet_extract", SOURCE_DIR / "extract.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_package_copy_equals_calibration_copy():
    names = ["classes.json", "templates.json", "LICENSE-open_clip", "LICENSE-timm", "NOTICE.md"]
    for name in names:
        assert (ASSET_DIR / name).read_bytes() == (SOURCE_DIR / name).read_bytes(), name


def test_class_list():
    wnids, names = imagenet_classes()
    assert len(wnids) == len(names) == 1000
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000
    assert (wnids[0], names[0]) == ("n01440764", "tench")
    assert (wnids[1], names[1]) == ("n01443537", "goldfish")
    assert (wnids[-1], names[-1]) == ("n15075141", "toilet paper")
    assert all(n == n.strip() and n for n in names)


def test_templates():
    openai, simple = imagenet_templates("openai"), imagenet_templates()
    assert openai == simple and len(openai) == 80
    assert openai[0] == "a bad photo of a {}." and "a photo of the {}." in openai
    assert all(t.count("{}") == 1 for t in openai)
    assert imagenet_templates("simple")[0] == "itap of a {}." and len(imagenet_templates("simple")) == 7
    with pytest.raises(OvclipError, match="unknown ImageNet template set 'x'; use one of openai, simple"):
        imagenet_templates("x")


def test_extract_reads_wheels_as_data(tmp_path):
    """The extraction script parses open_clip's module (lambdas -> '{}' templates) and timm's synset list."""
    ex = _extract_module()
    oc = tmp_path / "open_clip_torch-0-py3-none-any.whl"
    with zipfile.ZipFile(oc, "w") as z:
        z.writestr(
            ex.OPEN_CLIP_MODULE,
            "OPENAI_IMAGENET_TEMPLATES = (lambda c: f'a bad photo of a {c}.', lambda c: f'{c} art')\n"
            "SIMPLE_IMAGENET_TEMPLATES = (lambda c: f'itap of a {c}.',)\n"
            "IMAGENET_CLASSNAMES = ('tench', 'goldfish')\n",
        )
        z.writestr("open_clip_torch-0.dist-info/licenses/LICENSE", "MIT text")
    tm = tmp_path / "timm-0-py3-none-any.whl"
    with zipfile.ZipFile(tm, "w") as z:
        z.writestr(ex.TIMM_SYNSETS, "n01440764\nn01443537\n")
        z.writestr("timm-0.dist-info/licenses/LICENSE", "Apache text")
    names, templates, lic = ex.read_open_clip(oc)
    assert names == ["tench", "goldfish"] and lic == "MIT text"
    assert templates == {"openai": ["a bad photo of a {}.", "{} art"], "simple": ["itap of a {}."]}
    assert ex.read_timm(tm) == (["n01440764", "n01443537"], "Apache text")
    out = tmp_path / "out"
    ex.write(out, names, ["n01440764", "n01443537"], templates, {"LICENSE-x": "t"}, {"dataset": "d"})
    d = json.loads((out / "classes.json").read_text())
    assert d == {"dataset": "d", "classes": [["n01440764", "tench"], ["n01443537", "goldfish"]]}


def _tree(root: Path, wnids: list[str], per_class: int = 1) -> Path:
    rng = np.random.default_rng(0)
    for w in wnids:
        (root / w).mkdir(parents=True)
        for k in range(per_class):
            Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).save(root / w / f"{w}_{k}.png")
    return root


def test_subset_of_wordnet_folders_gets_clip_names(tmp_path):
    root = _tree(tmp_path / "val", ["n01443537", "n01440764", "n15075141"], per_class=2)
    d = image_folder(root)
    assert d.class_names == ["n01440764", "n01443537", "n15075141"]
    assert d.prompt_names == ["tench", "goldfish", "toilet paper"]
    assert d.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert [p.parent.name for p in d.paths] == ["n01440764"] * 2 + ["n01443537"] * 2 + ["n15075141"] * 2
    assert open_dataset(str(root)).prompt_names == d.prompt_names
    assert is_imagenet_folder(root)


def test_full_thousand_folder_tree(tmp_path):
    wnids, names = imagenet_classes()
    root = tmp_path / "train"
    for w in wnids:  # empty class folders are enough for the layout check
        (root / w).mkdir(parents=True)
    got = imagenet_layout(root, [p.name for p in root.iterdir()])
    assert got == (wnids, names)
    assert is_imagenet_folder(root)
    assert got[1].count("missile") == 2  # the standard list names two classes alike: labels stay the WordNet ids


def test_wordnet_like_names_outside_imagenet_1k(tmp_path):
    root = _tree(tmp_path / "x", ["n01440764", "n00000001"])
    with pytest.raises(OvclipError, match=r"1 of 2 class folders are named like WordNet ids but are not ImageNet-1k"):
        image_folder(root)
    assert not is_imagenet_folder(root)


def test_plain_folders_and_labels_file_unchanged(tmp_path):
    root = _tree(tmp_path / "plain", ["n01440764", "cat"])
    d = image_folder(root)  # not every folder is a WordNet id: folder names as before
    assert d.class_names == d.prompt_names == ["cat", "n01440764"]
    assert not is_imagenet_folder(root) and not is_imagenet_folder(tmp_path / "missing")
    root2 = _tree(tmp_path / "named", ["n01440764", "n01443537"])
    (root2 / "labels.txt").write_text("fish one\nfish two\n")
    d2 = open_dataset(str(root2))  # a labels file in the folder wins over the shipped names
    assert d2.prompt_names == ["fish one", "fish two"]


def test_template_choice_for_imagenet_folders(tmp_path):
    from ovclip.bench.report import templates_for
    from ovclip.data.prompts import prompt_templates, template_set_of
    from ovclip.exits.config import ExitBuildConfig

    root = _tree(tmp_path / "val", ["n01440764", "n01443537"])
    plain = _tree(tmp_path / "plain", ["cat", "dog"])
    assert template_set_of(str(root)) == "imagenet" and template_set_of(str(plain)) == "generic"
    assert template_set_of("builtin") == "fashion-mnist"
    assert prompt_templates("imagenet") == imagenet_templates("openai") == templates_for(str(root))
    assert prompt_templates("imagenet-simple") == imagenet_templates("simple")
    assert ExitBuildConfig(templates="imagenet").templates == "imagenet"  # the exit build accepts the sets
