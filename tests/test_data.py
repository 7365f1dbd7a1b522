"""Datasets: built-in sets, Fashion-MNIST idx files, image folders, labels files, captions, prompts."""

from __future__ import annotations

import gzip
import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ovclip.data.datasets as ds
from ovclip.data.builtin import builtin_classes
from ovclip.data.datasets import (
    builtin_calibration,
    builtin_eval,
    fashion_mnist,
    image_folder,
    load_captions,
    open_dataset,
    read_labels_file,
)
from ovclip.data.fashion_mnist import CLASS_NAMES, DEBIAN_PATH
from ovclip.data.prompts import (
    GENERIC_TEMPLATES,
    all_prompts,
    builtin_templates,
    class_prompts,
    ensemble,
    prompt_templates,
    template_set_of,
)
from ovclip.errors import OvclipError
from ovclip.preprocess import PreprocessConfig, preprocess

SMALL = PreprocessConfig(size=32)
HAVE_DEBIAN = (DEBIAN_PATH / "t10k-labels-idx1-ubyte.gz").exists()
needs_debian = pytest.mark.skipif(
    not HAVE_DEBIAN, reason=f"Debian package dataset-fashion-mnist not installed ({DEBIAN_PATH} missing)"
)


# ------------------------------------------------------------------------------------------ built-in sets


def test_builtin_eval_shape_and_balance():
    d = builtin_eval()
    assert len(d) == 2000 and d.gray.shape == (2000, 28, 28)
    assert d.class_names == list(CLASS_NAMES) and len(d.prompt_names) == 10
    assert np.bincount(d.labels, minlength=10).tolist() == [200] * 10
    assert d.skipped == []


def test_builtin_calibration_shape():
    d = builtin_calibration()
    assert len(d) == 6000 and d.num_classes == 10
    assert d.labels.min() == 0 and d.labels.max() == 9
    assert d.prompt_names == builtin_classes()[1]


@pytest.mark.parametrize("cfg", [PreprocessConfig(), SMALL], ids=["224", "32"])
def test_builtin_pixels_equal_preprocess_of_L_image(cfg):
    d = builtin_eval()
    idx = np.array([0, 7, 1999])
    got = d.pixels(idx, cfg)
    assert got.shape == (3, 3, cfg.size, cfg.size) and got.dtype == np.float32
    for row, i in zip(got, idx, strict=True):
        np.testing.assert_array_equal(row, preprocess(Image.fromarray(d.gray[i], mode="L"), cfg))


@pytest.mark.parametrize("sel", [slice(3, 6), np.array([3, 4, 5]), [3, 4, 5], np.arange(2000) % 1000 == 0], ids=str)
def test_pixels_selection_forms(sel):
    d = builtin_eval()
    rows = np.arange(2000)[sel]
    np.testing.assert_array_equal(d.pixels(sel, SMALL), d.pixels(rows, SMALL))
    assert len(d.subset(sel)) == len(rows)
    np.testing.assert_array_equal(d.subset(sel).labels, d.labels[rows])


@needs_debian
@pytest.mark.parametrize(
    ("spec", "split"), [(None, "test"), ("builtin", "test"), ("builtin:calibration", "train")], ids=str
)
def test_builtin_sets_are_rows_of_the_debian_splits(spec, split):
    from ovclip.data.builtin import CALIBRATION_FILE, EVAL_FILE, load_npz

    images, labels, source_index = load_npz(EVAL_FILE if split == "test" else CALIBRATION_FILE)
    full = fashion_mnist(split)
    np.testing.assert_array_equal(images, full.gray[source_index])
    np.testing.assert_array_equal(labels, full.labels[source_index])
    assert len(np.unique(source_index)) == len(source_index)
    np.testing.assert_array_equal(open_dataset(spec).gray, images)


# ------------------------------------------------------------------------------------------ Fashion-MNIST


@needs_debian
def test_fashion_mnist_debian():
    test = fashion_mnist("test")
    assert len(test) == 10000 and test.gray.shape == (10000, 28, 28)
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert test.labels[0] == 9  # the first t10k image is an ankle boot
    train = open_dataset("fashion-mnist:train")
    assert len(train) == 60000 and np.bincount(train.labels).tolist() == [6000] * 10


def _write_idx(path: Path, arr: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
def test_fashion_mnist_from_handmade_idx(tmp_path, gz):
    images = np.arange(3 * 28 * 28, dtype=np.uint64).reshape(3, 28, 28) % 251
    labels = np.array([9, 0, 4])
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", images, gz)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, gz)

    d = fashion_mnist("test", root=tmp_path)
    np.testing.assert_array_equal(d.gray, images.astype(np.uint8))
    np.testing.assert_array_equal(d.labels, labels)
    assert d.labels.dtype == np.int64 and d.class_names == list(CLASS_NAMES)

    via_spec = open_dataset(str(tmp_path))  # a folder of idx files is recognised
    np.testing.assert_array_equal(via_spec.gray, d.gray)
    np.testing.assert_array_equal(open_dataset(f"{tmp_path}:test").labels, labels)
    with pytest.raises(OvclipError, match="no Fashion-MNIST train idx files"):
        open_dataset(f"{tmp_path}:train")


def test_fashion_mnist_missing_folder_names_the_package(tmp_path, monkeypatch):
    gone = tmp_path / "nowhere"
    monkeypatch.setattr(ds, "DEBIAN_PATH", gone)
    with pytest.raises(OvclipError, match="dataset-fashion-mnist"):
        fashion_mnist("test", root=gone)
    with pytest.raises(OvclipError, match="split"):
        fashion_mnist("validation", root=DEBIAN_PATH if HAVE_DEBIAN else tmp_path)


# ------------------------------------------------------------------------------------------ image folders


def _photo(name: str, size: int = 80) -> Image.Image:
    import skimage.data

    img = Image.fromarray(getattr(skimage.data, name)())
    img.thumbnail((size, size))  # real photos, made small to keep the test fast
    return img


def _make_folder(root: Path) -> dict[str, list[Path]]:
    """3 class folders of real photos (PNG and JPEG), plus files the loader must ignore."""
    files = {"astronaut": [], "cat": [], "coffee": []}
    for cls, photo in [("astronaut", "astronaut"), ("cat", "chelsea"), ("coffee", "coffee")]:
        d = root / cls
        d.mkdir(parents=True)
        img = _photo(photo)
        img.save(d / f"{photo}.png")
        img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(d / f"{photo}_flip.JPG", quality=90)
        files[cls] = [d / f"{photo}.png", d / f"{photo}_flip.JPG"]
    (root / "coffee" / "more").mkdir()
    _photo("coffee").rotate(90).save(root / "coffee" / "more" / "cup.jpeg")  # nested: found recursively
    files["coffee"].append(root / "coffee" / "more" / "cup.jpeg")
    (root / "cat" / ".DS_Store").write_bytes(b"\x00\x01junk")  # hidden: ignored
    (root / "cat" / "._chelsea.png").write_bytes(b"\x00\x05\x16\x07")  # AppleDouble: hidden, ignored
    (root / "cat" / "notes.txt").write_text("not an image")  # unknown extension: ignored
    (root / ".cache").mkdir()  # hidden folder: not a class
    return files


def test_image_folder_real_photos(tmp_path):
    files = _make_folder(tmp_path)
    d = image_folder(tmp_path)
    assert d.class_names == ["astronaut", "cat", "coffee"] == d.prompt_names
    assert len(d) == 7 and np.bincount(d.labels).tolist() == [2, 2, 3]
    assert d.skipped == []
    for i, (path, label) in enumerate(zip(d.paths, d.labels, strict=True)):
        assert path in files[d.class_names[label]]
        ref = preprocess(Image.open(path).convert("RGB"), SMALL)  # plain Pillow as the reference
        np.testing.assert_array_equal(d.pixels([i], SMALL)[0], ref)
    assert d.pixels(slice(0, 7), SMALL).shape == (7, 3, 32, 32)


def test_image_folder_broken_file_skipped_or_strict(tmp_path):
    _make_folder(tmp_path)
    good = (tmp_path / "cat" / "chelsea.png").read_bytes()
    (tmp_path / "cat" / "broken.png").write_bytes(good[: len(good) // 2])
    _photo("astronaut").save(tmp_path / "stray.png")  # outside any class folder

    d = image_folder(tmp_path)
    assert len(d) == 7
    reasons = dict(d.skipped)
    assert "truncated" in reasons[str(tmp_path / "cat" / "broken.png")]
    assert "outside any class folder" in reasons[str(tmp_path / "stray.png")]
    assert "2 skipped" in d.source

    with pytest.raises(OvclipError, match=r"broken\.png.*truncated"):
        image_folder(tmp_path, strict=True)


def test_image_folder_class_with_only_broken_images(tmp_path):
    _make_folder(tmp_path)
    (tmp_path / "empty-ish").mkdir()
    (tmp_path / "empty-ish" / "zero.jpg").write_bytes(b"")
    with pytest.raises(OvclipError, match=r"empty-ish.*zero\.jpg.*0 bytes"):
        image_folder(tmp_path)


def _only_top_level_images(root: Path) -> None:
    _photo("coffee").save(root / "a.png")


def _class_without_images(root: Path) -> None:
    _make_folder(root)
    (root / "dog").mkdir()
    (root / "dog" / "readme.txt").write_text("no pictures yet")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda r: None, "folder is empty"),
        (lambda r: (r / ".hidden").write_text("x"), "folder is empty"),
        (_only_top_level_images, "no class subfolders"),
        (_class_without_images, r"class folder 'dog' holds no images"),
    ],
    ids=["empty", "only-hidden", "no-subfolders", "class-without-images"],
)
def test_image_folder_errors(tmp_path, build, message):
    build(tmp_path)
    with pytest.raises(OvclipError, match=message):
        image_folder(tmp_path)


def test_image_folder_missing_or_file(tmp_path):
    with pytest.raises(OvclipError, match="not found"):
        image_folder(tmp_path / "nope")
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(OvclipError, match="is a file"):
        image_folder(tmp_path / "f.png")


# ------------------------------------------------------------------------------------------ labels files


def _tiny_folder(root: Path, names: list[str]) -> None:
    for i, n in enumerate(names):
        (root / n).mkdir(parents=True)
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / n / "x.png")


@pytest.mark.parametrize(
    ("folders", "content", "file_name", "classes", "prompts"),
    [
        # text file naming the folders fixes the order
        (["cat", "dog"], "dog\ncat\n\n", "labels.txt", ["dog", "cat"], ["dog", "cat"]),
        # positional: names for WordNet-id folders, in sorted folder order
        (["n02", "n01"], "tench\ngoldfish\n", "labels.txt", ["tench", "goldfish"], ["tench", "goldfish"]),
        # JSON with prompt names, Unicode
        (
            ["chat", "café"],
            json.dumps({"labels": ["café", "chat"], "prompt_names": ["cup of coffee", "cat"]}),
            "labels.json",
            ["café", "chat"],
            ["cup of coffee", "cat"],
        ),
        # UTF-8 with BOM, CRLF
        (["a", "b"], "\ufeffb\r\na\r\n", "labels.txt", ["b", "a"], ["b", "a"]),
    ],
    ids=["by-name", "positional", "json", "bom-crlf"],
)
def test_labels_file_good(tmp_path, folders, content, file_name, classes, prompts):
    root = tmp_path / "imgs"
    _tiny_folder(root, folders)
    lf = tmp_path / file_name
    lf.write_text(content, encoding="utf-8")
    d = image_folder(root, labels_file=lf)
    assert d.class_names == classes and d.prompt_names == prompts
    # every image carries the label of the folder it sits in (by name, or i-th sorted folder)
    by_name = set(classes) <= set(folders)
    folder_of = {c: c for c in classes} if by_name else dict(zip(classes, sorted(folders), strict=True))
    assert [p.parent.name for p in d.paths] == [folder_of[classes[k]] for k in d.labels]
    assert sorted(p.parent.name for p in d.paths) == sorted(folders)
    lf.rename(root / file_name)  # open_dataset picks up a labels file inside the folder
    assert open_dataset(str(root)).class_names == classes


def test_labels_file_nfd_folder_matches_nfc_label(tmp_path):
    nfd = unicodedata.normalize("NFD", "café")
    _tiny_folder(tmp_path / "imgs", [nfd, "tea"])
    lf = tmp_path / "labels.txt"
    lf.write_text("tea\ncafé\n", encoding="utf-8")  # NFC, as typed
    d = image_folder(tmp_path / "imgs", labels_file=lf)
    assert d.class_names == ["tea", "café"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"cat\ndog\ncat\n", r"line 3: duplicate class name 'cat' \(also at line 1\)"),
        (b"cat\n\ndog\n", "line 2: empty class name"),
        (b"cat\n  \t\ndog\n", "line 2: empty class name"),
        (b"cat\nd\xf6g\n", "line 2: not valid UTF-8"),
        (b"\n\n", "no class names"),
        (b'{"labels": ["cat", "dog"], "prompt_names": ["a cat"]}', "prompt_names must be a list as long as labels"),
        (b'{"labels": ["cat", ""]}', r"labels\[1\]: empty class name"),
        (b'{"labels": ["cat", "dog"], "prompt_names": ["x", "x"]}', "duplicate prompt name 'x'"),
        (b'{"labels": ["cat", 3]}', "must be a string"),
        (b'{"names": ["cat"]}', "must be an object"),
        (b'{"labels": ["cat",\n', "line 2: malformed JSON"),
    ],
    ids=[
        "duplicate",
        "empty-line",
        "blank-line",
        "latin-1",
        "nothing",
        "json-lengths",
        "json-empty",
        "json-dup-prompts",
        "json-not-string",
        "json-no-labels",
        "json-broken",
    ],
)
def test_labels_file_errors(tmp_path, content, message):
    lf = tmp_path / "labels.txt"
    lf.write_bytes(content)
    with pytest.raises(OvclipError, match=message) as info:
        read_labels_file(lf)
    assert "labels.txt" in str(info.value)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ("wolf\n", "1 class names do not match the 2 subfolders"),  # positional needs one name per folder
        ("cat\nwolf\n", r"no folder for 'wolf'"),  # some names are folders, some not
        ("wolf\nfox\nbear\n", "3 class names do not match"),
    ],
    ids=["too-few", "unknown-name", "too-many"],
)
def test_labels_file_not_matching_folders(tmp_path, labels, message):
    _tiny_folder(tmp_path / "imgs", ["cat", "dog"])
    (tmp_path / "l.txt").write_text(labels, encoding="utf-8")
    with pytest.raises(OvclipError, match=message):
        image_folder(tmp_path / "imgs", labels_file=tmp_path / "l.txt")


def test_labels_file_leaving_out_a_folder(tmp_path):
    _tiny_folder(tmp_path / "imgs", ["cat", "dog", "emu"])
    (tmp_path / "l.txt").write_text("dog\ncat\n", encoding="utf-8")
    with pytest.raises(OvclipError, match="'emu' not listed"):
        image_folder(tmp_path / "imgs", labels_file=tmp_path / "l.txt")


# ------------------------------------------------------------------------------------------ open_dataset


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("builtin:foo", "unknown built-in set"),
        ("fashion-mnist:valid", "unknown Fashion-MNIST split"),
        ("/definitely/not/here", "not found"),
        ("imagenet", "not found"),
    ],
)
def test_open_dataset_errors(spec, message):
    with pytest.raises(OvclipError, match=message):
        open_dataset(spec)


def test_open_dataset_file_and_folder(tmp_path):
    (tmp_path / "x.jsonl").write_text("{}\n")
    with pytest.raises(OvclipError, match="is a file, not a data set"):
        open_dataset(str(tmp_path / "x.jsonl"))
    _tiny_folder(tmp_path / "imgs", ["b", "a"])
    (tmp_path / "imgs" / "a" / "bad.png").write_bytes(b"nope")
    assert open_dataset(str(tmp_path / "imgs")).class_names == ["a", "b"]
    with pytest.raises(OvclipError, match="bad.png"):
        open_dataset(str(tmp_path / "imgs"), strict=True)


# ------------------------------------------------------------------------------------------ captions


def _caption_images(root: Path) -> None:
    (root / "img").mkdir(parents=True)
    _photo("chelsea", 48).save(root / "img" / "cat.png")
    _photo("coffee", 48).save(root / "img" / "coffee.jpg")


def _jsonl(path: Path, rows: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_captions_good(tmp_path):
    _caption_images(tmp_path)
    f = _jsonl(
        tmp_path / "caps.jsonl",
        [
            {"image": "img/cat.png", "caption": "a cat"},
            {"image": "img/coffee.jpg", "caption": "une tasse de café ☕", "id": 7},
            "",
            {"image": str(tmp_path / "img" / "cat.png"), "caption": "  a tabby cat  "},  # absolute, same image
        ],
    )
    c = load_captions(f)
    assert c.image_paths == [(tmp_path / "img" / "cat.png").resolve(), (tmp_path / "img" / "coffee.jpg").resolve()]
    assert c.captions == ["a cat", "une tasse de café ☕", "a tabby cat"]
    assert c.image_index.tolist() == [0, 1, 0]
    assert c.skipped == []
    np.testing.assert_array_equal(
        c.pixels([1], SMALL)[0], preprocess(Image.open(tmp_path / "img" / "coffee.jpg").convert("RGB"), SMALL)
    )


def test_captions_missing_image_skipped_or_strict(tmp_path):
    _caption_images(tmp_path)
    f = _jsonl(
        tmp_path / "caps.jsonl",
        [
            {"image": "img/cat.png", "caption": "a cat"},
            {"image": "img/dog.png", "caption": "a dog"},
            {"image": "img/coffee.jpg", "caption": "coffee"},
            {"image": "img/dog.png", "caption": "another dog"},
        ],
    )
    c = load_captions(f)
    assert c.captions == ["a cat", "coffee"] and c.image_index.tolist() == [0, 1]
    (file, reason), *rest = c.skipped
    assert not rest and file.endswith("dog.png") and "no such file" in reason and "lines 2, 4" in reason
    with pytest.raises(OvclipError, match=r"dog\.png.*lines 2, 4"):
        load_captions(f, strict=True)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"image": "img/cat.png", "caption": "ok"}, '{"image": "img/cat.png", "caption": }'], "line 2: malformed"),
        ([{"image": "img/cat.png", "caption": "ok"}, "", {"image": "img/cat.png"}], "line 3: missing key.*'caption'"),
        ([{"caption": "x"}], "line 1: missing key.*'image'"),
        ([{"image": "img/cat.png", "caption": "   "}], "line 1: empty caption"),
        ([{"image": "img/cat.png", "caption": 5}], "line 1: 'caption' must be a string"),
        ([{"image": "", "caption": "x"}], "line 1: 'image' must be a non-empty path"),
        ([["img/cat.png", "x"]], "line 1: expected a JSON object"),
        ([{"image": "img/nope.png", "caption": "x"}], "none of the 1 images could be read"),
    ],
    ids=["malformed", "no-caption", "no-image", "empty-caption", "caption-type", "empty-image", "array", "all-missing"],
)
def test_captions_errors(tmp_path, rows, message):
    _caption_images(tmp_path)
    f = _jsonl(tmp_path / "caps.jsonl", rows)
    with pytest.raises(OvclipError, match=message) as info:
        load_captions(f)
    assert "caps.jsonl" in str(info.value)


@pytest.mark.parametrize(("content", "message"), [(b"", "empty"), (b"\n \n", "empty"), (b"\xff\xfe{", "UTF-8")])
def test_captions_empty_or_not_utf8(tmp_path, content, message):
    (tmp_path / "c.jsonl").write_bytes(content)
    with pytest.raises(OvclipError, match=message):
        load_captions(tmp_path / "c.jsonl")
    with pytest.raises(OvclipError, match="not found"):
        load_captions(tmp_path / "missing.jsonl")


# ------------------------------------------------------------------------------------------ prompts


def test_templates_and_class_prompts():
    eval_t, train_t = builtin_templates("eval"), builtin_templates("train")
    assert eval_t and train_t and all("{}" in t for t in eval_t + train_t)
    p = class_prompts(["cat", "{odd} name"], ["a photo of a {}.", "{} {}"])
    assert p == [["a photo of a cat.", "cat cat"], ["a photo of a {odd} name.", "{odd} name {odd} name"]]
    with pytest.raises(OvclipError, match="unknown template set"):
        builtin_templates("test")
    with pytest.raises(OvclipError, match="no '{}'"):
        class_prompts(["cat"], ["a photo"])
    with pytest.raises(OvclipError, match="no prompt templates"):
        class_prompts(["cat"], [])


def test_template_sets_are_chosen_by_name():
    assert prompt_templates("fashion-mnist") == builtin_templates("eval")
    assert prompt_templates("generic") == GENERIC_TEMPLATES
    assert {template_set_of(s) for s in (None, "builtin", "builtin:calibration", "fashion-mnist:test")} == {
        "fashion-mnist"
    }
    assert template_set_of("/data/my-photos") == template_set_of("fashion_photos") == "generic"
    with pytest.raises(OvclipError, match="templates='cifar': choose one of fashion-mnist, generic") as e:
        prompt_templates("cifar")
    assert e.value.params == ("templates",)
    assert all_prompts(["cat", "{odd}"], ["a {}.", "{}!"]) == ["a cat.", "cat!", "a {odd}.", "{odd}!"]


def test_ensemble_matches_reference_loop():
    rng = np.random.default_rng(1)
    e = rng.normal(size=(4, 5, 8)).astype(np.float32)
    ref = np.empty((4, 8))
    for c in range(4):
        units = [v / np.sqrt(sum(x * x for x in v)) for v in e[c].astype(float)]
        mean = sum(units) / len(units)
        ref[c] = mean / np.sqrt(sum(x * x for x in mean))
    out = ensemble(e)
    assert out.shape == (4, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-7)
    # scaling one template's embedding does not change the class embedding (it is normalised first)
    scaled = e.copy()
    scaled[:, 2] *= 50
    np.testing.assert_allclose(ensemble(scaled), out, rtol=1e-6, atol=1e-6)
    # one template: the unit vector itself
    np.testing.assert_allclose(ensemble(e[:, :1]), e[:, 0] / np.linalg.norm(e[:, 0], axis=1, keepdims=True), 1e-6)
    with pytest.raises(OvclipError, match="shape"):
        ensemble(e[0])
