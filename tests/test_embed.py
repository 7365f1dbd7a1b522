"""`ovclip embed` / `ovclip search` in one process: sources, rows, resuming, errors, and search against brute force.

Every row is checked against the deployment run on that image alone (exit block exact, embedding within 1e-5),
against the file itself (width, height) and against the manifest (digest); search results against a numpy top-k
over the same embeddings.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from embed_support import early_exit_folder, read_rows, write_fmnist_tree
from PIL import Image

from ovclip.data.images import load_image
from ovclip.embed import EmbedOptions, embed_collection, open_source
from ovclip.errors import OvclipError
from ovclip.index import AnnOptions, Index, build_index, search
from ovclip.runtime import Deployment

N = 90
SHARD = 32


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist") / "tree"
    return root, write_fmnist_tree(root, N)


@pytest.fixture(scope="module")
def folder(fp32_folder, tree, tmp_path_factory):
    good = [p for p in tree[1] if p.name not in ("corrupt.png", "empty.jpg")]
    return early_exit_folder(fp32_folder, tmp_path_factory.mktemp("ee") / "tiny-ee", good[:48])


@pytest.fixture(scope="module")
def run(tree, folder, tmp_path_factory):
    """One uninterrupted run (3 shards of 32), its index, and the per-image reference."""
    out = tmp_path_factory.mktemp("run") / "out"
    events = []
    result = embed_collection(tree[0], folder, out, EmbedOptions(shard_size=SHARD, batch=8), progress=events.append)
    build_index(out, out.parent / "idx")
    return result, out, events


def test_sources_list_every_image_once_in_a_fixed_order(tree, tmp_path):
    root, expected = tree
    assert [it.path for it in open_source(root).items()] == [str(p) for p in expected]
    assert sum(1 for p in expected if p.name in ("corrupt.png", "empty.jpg")) == 2  # listed, then skipped
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a comment\n{expected[1].relative_to(root.parent)}\n\n{expected[0]}\n")
    os.symlink(root, tmp_path / root.name)
    got = [it.path for it in open_source(listing).items()]
    assert got == [str(tmp_path / expected[1].relative_to(root.parent)), str(expected[0])]
    jsonl = tmp_path / "caps.jsonl"
    lines = [(expected[2], "a"), (expected[2], "b"), (expected[3], "c"), (expected[2], "d")]
    jsonl.write_text("".join(json.dumps({"image": str(p), "caption": c}) + "\n" for p, c in lines))
    items = list(open_source(jsonl).items())
    assert [(it.path, it.captions) for it in items] == [
        (str(expected[2]), ("a", "b")),
        (str(expected[3]), ("c",)),
        (str(expected[2]), ("d",)),
    ]


def test_rows_are_the_deployment_run_on_each_image(tree, folder, run):
    result, out, events = run
    images = tree[1]
    bad = {str(p) for p in images if p.name in ("corrupt.png", "empty.jpg")}
    rows = read_rows(out)
    assert set(rows) == {str(p) for p in images} - bad
    assert (result.images, result.rows, result.skipped, result.shards) == (len(images), len(images) - 2, 2, 3)
    dep = Deployment(folder)
    digest = hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
    exits = []
    for path, row in rows.items():
        ref = dep.run_vision(dep.preprocess([load_image(path)]))
        assert row["exit_block"] == ref.exit_layer[0]
        np.testing.assert_allclose(row["embedding"], ref.embeddings[0], atol=1e-5)
        assert (row["width"], row["height"]) == Image.open(path).size == (28, 28)
        assert row["manifest_digest"] == digest
        exits.append(row["exit_block"])
    hist = {int(k): int(v) for k, v in zip(*np.unique(exits, return_counts=True), strict=True)}
    assert set(hist) == {3, 4} and result.exit_histogram == hist  # images really exit early, and not all of them
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["exit_histogram"] == {str(k): v for k, v in hist.items()} and summary["skipped"] == 2
    skipped = (out / "_skipped.tsv").read_text().splitlines()
    assert skipped[0] == "path\treason" and sorted(line.split("\t")[0] for line in skipped[1:]) == sorted(bad)
    assert any("empty (0 bytes)" in line for line in skipped) and any(
        "not an image in a supported" in line for line in skipped
    )
    counts = [e.done for e in events if hasattr(e, "done")]
    assert counts == sorted(counts) and counts[-1] == len(images) and events[-1].total == len(images)


def test_rerun_redoes_only_missing_or_damaged_shards(tree, folder, run, tmp_path):
    _, out, _ = run
    copy = tmp_path / "out"
    copy.mkdir()
    for f in out.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    (copy / "part-00001.parquet").unlink()
    (copy / "part-00002.parquet").write_bytes(b"PAR1 cut short")
    kept = (copy / "part-00000.parquet").stat().st_mtime_ns
    result = embed_collection(tree[0], folder, copy, EmbedOptions(shard_size=SHARD, batch=8))
    assert result.resumed_shards == 1 and result.new_images == len(tree[1]) - SHARD
    assert (copy / "part-00000.parquet").stat().st_mtime_ns == kept
    assert pq.read_table(copy).equals(pq.read_table(out))


def test_a_changed_source_or_other_settings_are_refused(tree, folder, run, tmp_path):
    root, images = tree
    _, out, _ = run
    with pytest.raises(OvclipError, match=r"holds a job with shard_size 32, not 16"):
        embed_collection(root, folder, out, EmbedOptions(shard_size=16))
    extra = images[5].with_name("00005-copy.png")
    extra.write_bytes(images[5].read_bytes())
    try:
        with pytest.raises(OvclipError, match=r"part-0000\d.parquet: written for other images than the source lists"):
            embed_collection(root, folder, out, EmbedOptions(shard_size=SHARD))
    finally:
        extra.unlink()
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "mine.txt").write_text("keep me")
    with pytest.raises(OvclipError, match=r"holds other files \(mine.txt, ...\) and no _embed.json"):
        embed_collection(root, folder, tmp_path / "x")


def test_strict_stops_at_the_first_unreadable_image_naming_it(tree, folder, tmp_path):
    corrupt = next(p for p in tree[1] if p.name == "corrupt.png")
    with pytest.raises(OvclipError) as e:
        embed_collection(tree[0], folder, tmp_path / "out", EmbedOptions(shard_size=SHARD, strict=True))
    assert str(e.value).startswith(f"{corrupt}: not an image in a supported format") and "`strict`" in str(e.value)


def _brute_force(out, query: np.ndarray, k: int) -> tuple[list[str], np.ndarray]:
    table = pq.read_table(out, columns=["path", "embedding"])
    emb = np.stack(table["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
    scores = emb @ query
    top = np.argsort(-scores, kind="stable")[:k]
    return [table["path"][int(i)].as_py() for i in top], scores[top]


def test_search_is_the_brute_force_top_k(run, tree):
    _, out, _ = run
    idx = Index(out.parent / "idx")
    assert idx.exact and idx.info["rows"] == N
    queries = [("text", "a photo of a sneaker"), ("text", "a bag"), ("image", tree[1][7])]
    for kind, q in queries:
        result = search(out.parent / "idx", **{kind: q}, k=10)
        paths, scores = _brute_force(out, idx.encode(**{kind: q})[0], 10)
        assert [h.path for h in result.hits] == paths
        np.testing.assert_allclose([h.score for h in result.hits], scores, atol=1e-5)
        assert [h.rank for h in result.hits] == list(range(1, 11))
    assert search(out.parent / "idx", image=tree[1][7], k=1).hits[0].path == str(tree[1][7])


def test_ann_index_past_the_threshold_finds_the_brute_force_neighbours(run, tmp_path):
    _, out, _ = run
    info = build_index(out, tmp_path / "ann", AnnOptions(min_rows=0, num_partitions=4, num_sub_vectors=4))
    assert info["ann"] is None  # 90 rows: too few to train PQ, so search stays exact (and says so)
    rng = np.random.default_rng(0)
    big = tmp_path / "big"  # 20 x 30 rows: shard 0 of the run, perturbed, as another job's shards
    big.mkdir()
    meta = json.loads((out / "_embed.json").read_text())
    (big / "_embed.json").write_text(json.dumps(meta))
    table = pq.read_table(out / "part-00000.parquet")
    emb = np.stack(table["embedding"].to_numpy(zero_copy_only=False))
    for s in range(20):
        noisy = emb + 0.05 * rng.standard_normal(emb.shape).astype(np.float32)
        noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
        t = table.set_column(1, "embedding", _fixed(noisy))
        t = t.set_column(0, "path", _strings([f"{p}#{s}" for p in table["path"].to_pylist()]))
        pq.write_table(t, big / f"part-{s:05d}.parquet")
    (big / "_summary.json").write_text("{}")
    for opts, ann in [
        (AnnOptions(min_rows=500), {"type": "IVF_FLAT", "num_partitions": 2}),
        (AnnOptions(min_rows=500, index_type="IVF_PQ", num_sub_vectors=8, refine_factor=20),
         {"type": "IVF_PQ", "num_partitions": 2, "num_sub_vectors": 8}),
    ]:  # fmt: skip
        info = build_index(big, tmp_path / "ann", opts)
        assert info["ann"] == ann and info["rows"] == 20 * len(emb)
        idx = Index(tmp_path / "ann")
        assert not idx.exact and idx.table.list_indices()
        recall = {1: [], 2: []}  # lists probed: one of the two, or both
        for q in rng.standard_normal((10, emb.shape[1])).astype(np.float32):
            q /= np.linalg.norm(q)
            paths, _ = _brute_force(big, q, 10)
            for nprobes, got in recall.items():
                got.append(len(set(paths) & {h.path for h in idx.search_vectors(q, 10, nprobes=nprobes)[0]}) / 10)
        assert np.mean(recall[2]) == 1.0 and np.mean(recall[1]) < 1.0, (ann, recall)  # the IVF index answers


def _fixed(a: np.ndarray):
    import pyarrow as pa

    return pa.FixedSizeListArray.from_arrays(pa.array(a.astype(np.float32).reshape(-1)), a.shape[1])


def _strings(values):
    import pyarrow as pa

    return pa.array(values, pa.string())


def test_cli_embed_search_and_their_errors(tree, folder, fp32_folder, run, tmp_path):
    from ovclip.cli import main

    _, out, _ = run
    runner = CliRunner()
    res = runner.invoke(main, ["embed", str(tree[0]), "--deployment", str(folder), "--out", str(tmp_path / "o"),
                               "--shard-size", str(SHARD), "--index", str(tmp_path / "i")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert f"embedded {N} of {N + 2} images" in res.output and "skipped 2 unreadable images" in res.output
    assert "4 (full depth)" in res.output and "exact search" in res.output
    assert pq.read_table(tmp_path / "o").equals(pq.read_table(out))
    res = runner.invoke(main, ["search", str(tmp_path / "i"), "--text", "a bag", "-k", "3", "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    ref = search(out.parent / "idx", text="a bag", k=3)
    assert [h["path"] for h in got["hits"]] == [h.path for h in ref.hits] and got["exact"] is True
    errors = [
        (["embed", str(tree[0]), "--deployment", str(folder), "--out", str(tmp_path / "b"), "--batch", "0"],
         "error: --batch 0: must be a whole number of at least 1"),
        (["embed", str(tmp_path / "nope"), "--deployment", str(folder), "--out", str(tmp_path / "c")],
         f"error: {tmp_path / 'nope'}: no such folder or file"),
        (["embed", str(tree[0]), "--deployment", str(tmp_path / "nodep"), "--out", str(tmp_path / "d")],
         f"error: {tmp_path / 'nodep'}: no such deployment folder"),
        (["search", str(tmp_path / "i"), "-k", "3"], "error: give --text or --image (one of them)"),
        (["search", str(tmp_path / "i"), "--text", "x", "-k", "0"], "error: -k 0: must be at least 1"),
        (["search", str(tmp_path / "o"), "--text", "x"], f"error: {tmp_path / 'o'}: not an ovclip index"),
        (["search", str(tmp_path / "i"), "--text", "x", "--deployment", str(tree[0])],
         f"error: {tree[0]}: not a deployment folder (no manifest.json); pass the folder `ovclip embed` used with "
         "--deployment"),
        (["search", str(tmp_path / "i"), "--text", "x", "--deployment", str(fp32_folder)],
         f"error: {fp32_folder} is not the deployment folder this index was built with"),
    ]  # fmt: skip
    for args, message in errors:
        res = runner.invoke(main, args)
        assert res.exit_code == 2 and message in res.output, (args, res.output)
        assert len(res.output.strip().splitlines()) == 1, res.output


def test_a_missing_extra_names_its_install_command(monkeypatch, tree, folder, tmp_path):
    (tmp_path / "ovclip-index.json").write_text('{"table": "images"}')
    monkeypatch.setitem(sys.modules, "lancedb", None)
    with pytest.raises(
        OvclipError, match=r"^the vector index needs lancedb, which is not installed: pip install 'ovclip\[index\]'$"
    ):
        Index(tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(
        OvclipError, match=r"^running on Ray needs ray, which is not installed: pip install 'ovclip\[ray\]'$"
    ):
        embed_collection(tree[0], folder, tmp_path / "out", EmbedOptions(ray=True))
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_captions_source_keeps_each_images_captions(tree, folder, run, tmp_path):
    images = [p for p in tree[1] if p.name not in ("corrupt.png", "empty.jpg")][:3]
    lines = [(images[0], "a shirt"), (images[0], "a top"), (images[1], "a boot"), (images[2], "a bag")]
    jsonl = tmp_path / "caps.jsonl"
    jsonl.write_text(
        "".join(json.dumps({"image": os.path.relpath(p, tmp_path), "caption": c}) + "\n" for p, c in lines)
    )
    result = embed_collection(jsonl, folder, tmp_path / "out", EmbedOptions(shard_size=2))
    assert (result.images, result.rows, result.shards) == (3, 3, 2)
    rows = read_rows(tmp_path / "out")
    assert {p: r["captions"] for p, r in rows.items()} == {
        str(images[0]): ["a shirt", "a top"],
        str(images[1]): ["a boot"],
        str(images[2]): ["a bag"],
    }
    single = read_rows(run[1])
    for p in rows:  # the same image gives the same embedding whichever source lists it
        np.testing.assert_allclose(rows[p]["embedding"], single[p]["embedding"], atol=1e-5)
    build_index(tmp_path / "out", tmp_path / "idx")
    hit = search(tmp_path / "idx", image=images[1], k=1).hits[0]
    assert (hit.path, hit.captions) == (str(images[1]), ["a boot"])
