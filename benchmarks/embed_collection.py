"""All 70,000 Fashion-MNIST images through `ovclip embed` into an index, in one process and on Ray; `ovclip search`
checked against brute force.

    python benchmarks/embed_collection.py --deployment out/int8 --work /tmp/embed/bench     # the reported run

Steps (each prints a table; everything goes to benchmarks/results/embed_collection.json):

1. tree:   the train and test idx files of Debian's dataset-fashion-mnist written out as PNGs,
           WORK/fmnist/{train,test}/<class>/<index>.png (kept between runs);
2. single: `ovclip embed WORK/fmnist --deployment D --out WORK/single --index WORK/idx70k --ann-min-rows 50000`,
           the one command, with the RSS of its process tree sampled every 0.25 s (peak, and RSS against the images
           done: flat means it does not grow with the number of images); images/s end to end and between the first
           and the last shard file (steady state); the exit histogram;
3. ray:    the same job with `--ray --ray-actors 2` (no index), its output compared with the single-process one;
4. rounds: the 10,000 test images, single process and `--ray` in rotating order, --rounds times: medians;
5. search: `ovclip search` with a class prompt per class over an index of the 10k test images (exact: below the
           ANN threshold) against a numpy top-10 over the same Parquet embeddings; precision@10 per class;
6. ann:    the 70k index (IVF-Flat, built by step 2): recall@10 of its top-10 against numpy's, for the 10 class
           prompts (through `ovclip search`) and for 500 test images as queries;
7. annpq:  (opt-in: --steps ...,annpq) the same with an IVF-PQ index (64 codes per vector, refine factor 50).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import _common as C
import numpy as np

PROMPT = "a photo of a {}."
SHARD = 4096


# --- the image tree ----------------------------------------------------------------------------------------


def write_tree(root: Path, limit: int | None = None) -> dict:
    from PIL import Image

    from ovclip.data.fashion_mnist import CLASS_NAMES, load_split

    done = root / ".complete"
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    counts = {}
    for split in ("train", "test"):
        x, y = load_split(split)
        x, y = x[:limit], y[:limit]
        for c in CLASS_NAMES:
            (root / split / c.replace("/", "-")).mkdir(parents=True, exist_ok=True)
        for i in range(len(x)):
            Image.fromarray(x[i]).save(root / split / CLASS_NAMES[y[i]].replace("/", "-") / f"{i:05d}.png")
        counts[split] = len(x)
    info = {"images": counts, "seconds": round(time.perf_counter() - t0, 1)}
    done.write_text(json.dumps(info))
    return info


def class_of(path: str) -> str:
    return Path(path).parent.name


# --- running ovclip embed with an RSS sampler -------------------------------------------------------------


def _tree_rss(proc) -> int:
    import psutil

    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def run_embed(args: list[str], out: Path, log: Path, period: float = 0.25) -> dict:
    """Run `ovclip embed ...`; sample the process tree's RSS and when shard files and the summary appear."""
    import psutil

    cmd = [sys.executable, "-m", "ovclip.cli", "embed", *args]
    samples: list[tuple[float, int, int]] = []  # (seconds, shard files, rss)
    shard_times: dict[int, float] = {}
    summary_at = None
    with open(log, "w") as f:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=C.REPO)
        ps = psutil.Process(proc.pid)
        while proc.poll() is None:
            now = time.perf_counter() - t0
            n = len(list(out.glob("part-*.parquet"))) if out.exists() else 0
            for k in range(n):
                shard_times.setdefault(k, now)
            if summary_at is None and (out / "_summary.json").exists():
                summary_at = now
            samples.append((now, n, _tree_rss(ps)))
            time.sleep(period)
        wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return {"command": "ovclip embed " + " ".join(args), "wall_s": wall, "embed_s": summary_at or wall,
            "samples": samples, "shard_times": shard_times, "log": str(log)}  # fmt: skip


def throughput(r: dict, images: int, shard: int = SHARD) -> dict:
    times = r["shard_times"]
    full = sorted(k for k in times if (k + 1) * shard <= images)
    steady = None
    if len(full) >= 3:  # images of shards 1..last full, over the time between shard 0 and the last full shard
        first, last = full[0], full[-1]
        steady = (last - first) * shard / (times[last] - times[first])
    return {"images_per_s_end_to_end": images / r["embed_s"], "images_per_s_steady": steady}


def rss_profile(r: dict, images: int, shard: int = SHARD) -> dict:
    """Peak RSS while embedding vs the images done at that moment, and the peak of the index phase."""
    embed = [(n, rss) for t, n, rss in r["samples"] if t <= r["embed_s"] and n >= 1]
    index = [rss for t, _, rss in r["samples"] if t > r["embed_s"]]
    by_shard: dict[int, int] = {}
    for n, rss in embed:
        by_shard[n] = max(by_shard.get(n, 0), rss)
    points = [(min(n * shard, images), by_shard[n]) for n in sorted(by_shard)]
    return {
        "peak_rss_mib_embedding": max((rss for _, rss in embed), default=0) / 2**20,
        "peak_rss_mib_index": max(index, default=0) / 2**20,
        "rss_mib_by_images_done": [(i, round(b / 2**20, 1)) for i, b in points],
    }


# --- checks against brute force ----------------------------------------------------------------------------


def load_embeddings(out: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    import pyarrow.parquet as pq

    t = pq.read_table(out, columns=["path", "embedding", "exit_block"])
    emb = np.asarray(t["embedding"].combine_chunks().flatten().to_numpy(), np.float32).reshape(t.num_rows, -1)
    return t["path"].to_pylist(), emb, t["exit_block"].to_numpy()


def brute_top(emb: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    scores = emb @ q
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top], kind="stable")]


def cli_search(index: Path, text: str, k: int = 10) -> dict:
    cmd = [sys.executable, "-m", "ovclip.cli", "search", str(index), "--text", text, "-k", str(k), "--json"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=C.REPO, check=True)
    return json.loads(res.stdout)


def same_top_k(hits: list[dict], paths: list[str], emb: np.ndarray, q: np.ndarray, k: int, tol: float = 1e-5):
    """(identical order, same set up to ties at the cut, max score difference)."""
    ref = brute_top(emb, q, k)
    ref_paths = [paths[i] for i in ref]
    got = [h["path"] for h in hits]
    diff = max(abs(h["score"] - float(emb[ref[j]] @ q)) for j, h in enumerate(hits))
    kth = float(emb[ref[-1]] @ q)
    index_of = {p: i for i, p in enumerate(paths)}
    ties_ok = all(p in ref_paths or abs(float(emb[index_of[p]] @ q) - kth) <= tol for p in got)
    return got == ref_paths, ties_ok, diff


def search_check(index: Path, out: Path, dep, classes: list[str]) -> list[dict]:
    paths, emb, _ = load_embeddings(out)
    rows = []
    for c in classes:
        text = PROMPT.format(c)
        res = cli_search(index, text)
        q = dep.encode_text([text])[0]
        same, ties_ok, diff = same_top_k(res["hits"], paths, emb, q, 10)
        p10 = sum(class_of(h["path"]) == c.replace("/", "-") for h in res["hits"]) / 10
        rows.append({"class": c, "same_order": same, "same_set": ties_ok, "max_score_diff": diff,
                     "precision_at_10": p10, "exact": res["exact"]})  # fmt: skip
    return rows


def ann_recall(index: Path, out: Path, dep, classes: list[str], n_images: int, seed: int = 0) -> dict:
    from ovclip.index import Index

    paths, emb, _ = load_embeddings(out)
    idx = Index(index)
    assert not idx.exact, f"{index} has no ANN index"
    text = []
    for c in classes:
        res = cli_search(index, PROMPT.format(c))
        ref = {paths[i] for i in brute_top(emb, dep.encode_text([PROMPT.format(c)])[0], 10)}
        text.append(len(ref & {h["path"] for h in res["hits"]}) / 10)
    rng = np.random.default_rng(seed)
    test_rows = [i for i, p in enumerate(paths) if "/test/" in p]
    queries = rng.choice(test_rows, n_images, replace=False)
    image, t_ann, t_brute = [], 0.0, 0.0
    for i in queries:
        t = time.perf_counter()
        hits = idx.search_vectors(emb[i], 10)[0]
        t_ann += time.perf_counter() - t
        t = time.perf_counter()
        ref = {paths[j] for j in brute_top(emb, emb[i], 10)}
        t_brute += time.perf_counter() - t
        image.append(len(ref & {h.path for h in hits}) / 10)
    return {"ann": idx.info["ann"], "search": idx.info["search"], "rows": idx.info["rows"],
            "recall_at_10_class_prompts": text, "recall_at_10_images_mean": float(np.mean(image)),
            "recall_at_10_images_min": float(np.min(image)), "image_queries": n_images,
            "ms_per_query_ann": 1000 * t_ann / n_images, "ms_per_query_numpy": 1000 * t_brute / n_images}  # fmt: skip


# --- main ------------------------------------------------------------------------------------------------


def compare_outputs(a: Path, b: Path) -> dict:
    pa_, ea, xa = load_embeddings(a)
    pb, eb, xb = load_embeddings(b)
    ib = {p: i for i, p in enumerate(pb)}
    order = np.array([ib[p] for p in pa_])
    return {"rows": len(pa_), "same_paths": set(pa_) == set(pb), "exit_mismatches": int((xa != xb[order]).sum()),
            "max_abs_embedding_diff": float(np.abs(ea - eb[order]).max())}  # fmt: skip


def _fresh(*paths: Path) -> None:
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)


SEARCH_COLUMNS = [("class", "class", ""), ("exact", "exact", ""), ("same_order", "same top-10", ""),
                  ("same_set", "same set", ""), ("max_score_diff", "max |score diff|", ".1e"),
                  ("precision_at_10", "P@10", ".1f")]  # fmt: skip


def step_single(w: Path, fm: Path, dep_dir: Path, total: int, ann_min_rows: int) -> dict:
    _fresh(w / "single", w / "idx70k")
    args = [str(fm), "--deployment", str(dep_dir), "--out", str(w / "single"), "--index", str(w / "idx70k"),
            "--ann-min-rows", str(ann_min_rows)]  # fmt: skip
    r = run_embed(args, w / "single", w / "single.log")
    single = {**r, **throughput(r, total), **rss_profile(r, total),
              "summary": json.loads((w / "single" / "_summary.json").read_text())}  # fmt: skip
    _print_run("single process (+ index)", single)
    return single


def ray_start_stop() -> float:
    """Seconds to start and stop a local 2-CPU Ray instance in a fresh process (imports excluded)."""
    code = ("import ray, time; t = time.perf_counter(); ray.init(address='local', num_cpus=2, include_dashboard=False, "
            "log_to_driver=False, logging_level='error'); ray.shutdown(); print(time.perf_counter() - t)")  # fmt: skip
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def components(fm: Path, dep, n: int = 1024, batch: int = 32) -> dict:
    """One thread: decode + preprocess per image, and inference alone (label-free early exit), in images/s."""
    from ovclip.data.images import load_image

    files = sorted((fm / "test").rglob("*.png"))[:n]
    t = time.perf_counter()
    pixels = np.stack([dep.preprocess([load_image(f)])[0] for f in files])
    prep = n / (time.perf_counter() - t)
    dep.run_vision(pixels[:batch])  # warm-up: compiles the graph
    t = time.perf_counter()
    for i in range(0, n, batch):
        dep.run_vision(pixels[i : i + batch])
    infer = n / (time.perf_counter() - t)
    out = {"decode_preprocess_img_s_1_thread": prep, "inference_img_s_1_request": infer, "images": n}
    print(f"components (one thread): decode+preprocess {prep:.0f} img/s, inference {infer:.0f} img/s (batch {batch})")
    return out


def step_ray(w: Path, fm: Path, dep_dir: Path, total: int) -> dict:
    _fresh(w / "ray")
    args = [str(fm), "--deployment", str(dep_dir), "--out", str(w / "ray"), "--ray", "--ray-actors", "2"]
    r = run_embed(args, w / "ray", w / "ray.log")
    ray = {**r, **throughput(r, total), **rss_profile(r, total), "ray_start_stop_s": ray_start_stop()}
    if (w / "single" / "_summary.json").exists():
        ray["equal_to_single"] = compare_outputs(w / "single", w / "ray")
    _print_run("--ray, 2 actors", ray)
    return ray


def step_search(w: Path, fm: Path, dep_dir: Path, dep, classes: list[str]) -> list[dict]:
    if not (w / "idx10k" / "ovclip-index.json").exists():
        _fresh(w / "test10k")
        args = [
            str(fm / "test"),
            "--deployment",
            str(dep_dir),
            "--out",
            str(w / "test10k"),
            "--index",
            str(w / "idx10k"),
        ]
        run_embed(args, w / "test10k", w / "test10k.log")
    rows = search_check(w / "idx10k", w / "test10k", dep, classes)
    print(C.table(rows, SEARCH_COLUMNS, "ovclip search vs numpy over the test images"))
    print(f"mean P@10 {np.mean([r['precision_at_10'] for r in rows]):.3f}")
    return rows


def step_ann_pq(w: Path, dep, classes: list[str], n_queries: int) -> dict:
    from ovclip.index import AnnOptions, build_index

    _fresh(w / "idx70k-pq")
    t = time.perf_counter()
    opts = AnnOptions(min_rows=0, index_type="IVF_PQ", num_sub_vectors=64, nprobes=40, refine_factor=50)
    build_index(w / "single", w / "idx70k-pq", opts)
    build_s = time.perf_counter() - t
    out = {"build_s": build_s, **ann_recall(w / "idx70k-pq", w / "single", dep, classes, n_queries)}
    print(json.dumps(out, indent=2))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deployment", type=Path, default=C.REPO / "out" / "int8")
    ap.add_argument("--work", type=Path, default=Path("/tmp/embed/bench"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ann-queries", type=int, default=500)
    ap.add_argument("--steps", default="single,ray,rounds,components,search,ann")
    ap.add_argument("--json", type=Path, default=C.RESULTS / "embed_collection.json")
    ap.add_argument("--ann-min-rows", type=int, default=50_000, help="--ann-min-rows of the 70k index")
    ap.add_argument("--limit", type=int, default=None, help="Smoke runs: only the first N images of each split.")
    a = ap.parse_args()
    steps = set(a.steps.split(","))
    run = C.Run("embed_collection", extra_packages=("ray", "lancedb", "pyarrow"))
    w, dep_dir = a.work, a.deployment.absolute()
    w.mkdir(parents=True, exist_ok=True)
    fm = w / ("fmnist" if a.limit is None else f"fmnist-{a.limit}")
    tree = run.data["tree"] = write_tree(fm, a.limit)
    total = sum(tree["images"].values())
    print(f"tree: {fm} ({total:,} PNGs)")
    if "single" in steps:
        run.data["single"] = step_single(w, fm, dep_dir, total, a.ann_min_rows)
    if "ray" in steps:
        run.data["ray"] = step_ray(w, fm, dep_dir, total)
    if "rounds" in steps:
        run.data["rounds"] = rounds(w, fm, dep_dir, a.rounds, tree["images"]["test"])
    from ovclip.data.fashion_mnist import CLASS_NAMES
    from ovclip.runtime import Deployment

    dep = Deployment(dep_dir, hint="throughput")
    if "components" in steps:
        run.data["components"] = components(fm, dep)
    if "search" in steps:
        run.data["search"] = step_search(w, fm, dep_dir, dep, list(CLASS_NAMES))
    if "ann" in steps:
        ann = run.data["ann"] = ann_recall(w / "idx70k", w / "single", dep, list(CLASS_NAMES), a.ann_queries)
        print(json.dumps(ann, indent=2))
    if "annpq" in steps:  # opt-in: the IVF-PQ alternative on the same embeddings (its build is slow)
        run.data["ann_pq"] = step_ann_pq(w, dep, list(CLASS_NAMES), a.ann_queries)
    run.finish(a.json)


def rounds(w: Path, fm: Path, dep_dir: Path, n: int, images: int) -> dict:
    variants = {"single": [], "ray": []}
    order = list(variants)
    for i in range(n):
        for v in order[i % 2 :] + order[: i % 2]:
            out = w / f"round-{v}"
            _fresh(out)
            extra = ["--ray", "--ray-actors", "2"] if v == "ray" else []
            r = run_embed([str(fm / "test"), "--deployment", str(dep_dir), "--out", str(out), *extra],
                          out, w / f"round-{v}-{i}.log")  # fmt: skip
            tp = throughput(r, images)
            variants[v].append({"wall_s": r["wall_s"], **tp})
            print(f"round {i} {v:<6} {r['wall_s']:6.1f} s  {tp['images_per_s_end_to_end']:6.1f} img/s end to end  "
                  f"{tp['images_per_s_steady'] or float('nan'):6.1f} img/s steady", flush=True)  # fmt: skip
    keys = ("wall_s", "images_per_s_end_to_end", "images_per_s_steady")
    med = {v: {k: _median([x[k] for x in xs]) for k in keys} for v, xs in variants.items()}
    print(json.dumps(med, indent=2))
    return {"runs": variants, "median": med}


def _median(xs: list) -> float | None:
    xs = [x for x in xs if x is not None]
    return C.median(xs) if xs else None


def _print_run(title: str, r: dict) -> None:
    steady = r["images_per_s_steady"]
    print(f"\n{title}: {r['command']}")
    steady_text = f", {steady:.1f} img/s steady" if steady else ""
    print(f"  wall {r['wall_s']:.1f} s, embedding done at {r['embed_s']:.1f} s: "
          f"{r['images_per_s_end_to_end']:.1f} img/s end to end{steady_text}")  # fmt: skip
    print(f"  peak RSS: {r['peak_rss_mib_embedding']:.0f} MiB embedding, {r['peak_rss_mib_index']:.0f} MiB index")
    print(f"  RSS (MiB) by images done: {r['rss_mib_by_images_done']}")
    if "summary" in r:
        print(f"  summary: {r['summary']}")
    if "equal_to_single" in r:
        print(f"  vs single process: {r['equal_to_single']}")
    sys.stdout.flush()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
