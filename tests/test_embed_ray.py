"""`ovclip embed --ray`: on a real local Ray instance (2 CPUs, a small object store), the Ray Data actor pool writes
the same rows as the single-process run, resumes the same way, and stops on an unreadable image with `strict`."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from embed_support import early_exit_folder, read_rows, write_fmnist_tree

from ovclip.embed import EmbedOptions, embed_collection
from ovclip.errors import OvclipError

N, SHARD = 60, 16


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist-ray") / "tree"
    return root, write_fmnist_tree(root, N)


@pytest.fixture(scope="module")
def folder(fp32_folder, tree, tmp_path_factory):
    good = [p for p in tree[1] if p.name not in ("corrupt.png", "empty.jpg")]
    return early_exit_folder(fp32_folder, tmp_path_factory.mktemp("ee-ray") / "tiny-ee", good)


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray")  # the test extra installs ray; this only guards a partial environment
    ray.init(address="local", num_cpus=2, object_store_memory=80 * 2**20, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def single(tree, folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "out"
    embed_collection(tree[0], folder, out, EmbedOptions(shard_size=SHARD, batch=4))
    return out


def test_ray_rows_equal_the_single_process_rows(tree, folder, single, ray_instance, tmp_path):
    out = tmp_path / "ray"
    opts = EmbedOptions(shard_size=SHARD, batch=4, ray=True, ray_actors=2)
    result = embed_collection(tree[0], folder, out, opts)
    assert ray_instance.is_initialized()  # an instance the caller started is left running
    assert (result.images, result.rows, result.skipped, result.shards) == (N + 2, N, 2, 4)
    a, b = read_rows(out), read_rows(single)
    assert set(a) == set(b) and len(a) == N
    exits = [a[p]["exit_block"] for p in a]
    assert set(exits) == {3, 4}  # some images leave early, some run to full depth
    for p in a:
        assert a[p]["exit_block"] == b[p]["exit_block"]
        assert (a[p]["width"], a[p]["height"], a[p]["manifest_digest"]) == (
            b[p]["width"],
            b[p]["height"],
            b[p]["manifest_digest"],
        )
        np.testing.assert_allclose(a[p]["embedding"], b[p]["embedding"], atol=1e-6)
    for name in ("_summary.json", "_skipped.tsv"):
        assert (out / name).read_text() == (single / name).read_text()
    # the resumed Ray run redoes exactly the missing shard
    (out / "part-00002.parquet").unlink()
    again = embed_collection(tree[0], folder, out, opts)
    assert again.resumed_shards == 3 and again.new_images == SHARD
    assert pq.read_table(out).equals(pq.read_table(tmp_path / "ray"))
    assert read_rows(out).keys() == a.keys()


def test_ray_strict_stops_with_the_actors_error(tree, folder, ray_instance, tmp_path):
    # two unreadable files, possibly in different shards: whichever shard fails first stops the run
    reasons = {"corrupt.png": "not an image", "empty.jpg": "file is empty"}
    bad = {str(p): reasons[p.name] for p in tree[1] if p.name in reasons}
    opts = EmbedOptions(shard_size=SHARD, ray=True, ray_actors=2, strict=True)
    with pytest.raises(OvclipError) as e:
        embed_collection(tree[0], folder, tmp_path / "out", opts)
    path, _, reason = str(e.value).partition(": ")
    assert path in bad and reason.startswith(bad[path]) and "`strict`" in reason, str(e.value)
    assert not (tmp_path / "out" / "_summary.json").exists()
