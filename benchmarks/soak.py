"""Soak: many images through one `Deployment` from several threads, as a long-running edge pipeline would.

Reports resident memory (RSS) after a warm-up, every --every images and at the end, the ratio end / after
warm-up (target: within 5%), failed requests (target: 0), images/s after the warm-up, the exit histogram,
and whether a fixed probe batch gives the same embeddings after the run as before it, and as a fresh
`Deployment` of the same folder (state that drifts or leaks between requests would show there).
Prints the command, machine and library versions; writes JSON (default benchmarks/results/soak.json).

    python benchmarks/soak.py out/int8 --images 20000 --threads 4      # the reported run
    python benchmarks/soak.py --images 2000                            # smoke (default folder, see below)

FOLDER defaults to out/int8 (the built-in model's INT8 folder) when it exists; otherwise a tiny random
FP32 CLIP is exported to a temporary folder (needs the export extra: torch, transformers).
Images are the built-in Fashion-MNIST eval images, classified against the built-in label set (so a
folder's early-exit policy is used), with a text request every --text-every batches.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import _common as C
import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_JSON = REPO / "benchmarks" / "results" / "soak.json"
TARGET_RSS_RATIO = 0.05


# --- memory ---------------------------------------------------------------------------------------------


def rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:  # /proc fallback (Linux)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("cannot read RSS: install psutil") from None


# --- the folder --------------------------------------------------------------------------------------


def tiny_fp32(root: Path) -> Path:
    """`random:tiny` exported as FP32 IR (for smoke runs where no real folder exists)."""
    from ovclip.checkpoint import load_checkpoint
    from ovclip.export import ExportOptions, export_deployment

    export_deployment(load_checkpoint("random:tiny"), root / "tiny-fp32", ExportOptions())
    return root / "tiny-fp32"


def default_folder() -> Path | None:
    for base in (Path.cwd(), REPO):
        if (base / "out" / "int8" / "manifest.json").is_file():
            return base / "out" / "int8"
    return None


# --- the run -----------------------------------------------------------------------------------------


class Soak:
    """Worker threads take batches from a shared counter until `images` have been sent."""

    def __init__(self, dep, pool: np.ndarray, class_emb: np.ndarray, args, texts: list[str]):
        self.dep, self.pool, self.class_emb, self.args, self.texts = dep, pool, class_emb, args, texts
        self.lock = threading.Lock()
        self.sent = 0  # images handed out
        self.done = 0  # images finished (ok or failed)
        self.batches = 0
        self.failed = 0  # failed requests (vision batches or text calls)
        self.failures: list[str] = []
        self.text_calls = 0
        self.exit_counts = np.zeros(dep.num_layers + 1, np.int64)
        self.samples: list[dict] = []
        self.next_sample = args.warmup
        self.t_warm: float | None = None
        self.rss_warm: int | None = None
        self.t0 = time.perf_counter()

    def _take(self) -> tuple[int, int] | None:
        with self.lock:
            if self.sent >= self.args.images:
                return None
            n = min(self.args.batch, self.args.images - self.sent)
            start, self.sent, self.batches = self.sent, self.sent + n, self.batches + 1
            return start, self.batches

    def _fail(self, what: str, e: BaseException) -> None:
        with self.lock:
            self.failed += 1
            if len(self.failures) < 20:
                self.failures.append(f"{what}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e) else ''}")

    def _record(self, n: int, exit_layer: np.ndarray | None) -> None:
        with self.lock:
            self.done += n
            if exit_layer is not None:
                self.exit_counts += np.bincount(exit_layer, minlength=len(self.exit_counts))
            while self.done >= self.next_sample:
                now, rss = time.perf_counter(), rss_bytes()
                if self.t_warm is None:
                    self.t_warm, self.rss_warm = now, rss
                s = {"images": self.done, "seconds": round(now - self.t0, 2), "rss_mb": round(rss / 2**20, 1)}
                self.samples.append(s)
                ratio = rss / self.rss_warm
                print(f"  {self.done:>8,} images  {s['seconds']:>8.1f} s  RSS {s['rss_mb']:>8.1f} MB  x{ratio:.3f}")
                self.next_sample += self.args.every

    def worker(self, finished: threading.Barrier, release: threading.Barrier) -> None:
        """Run batches until none are left, then stay alive (its infer requests with it) until the end RSS
        is read: a worker that exits frees its thread's requests, which would read as memory 'returned'."""
        try:
            self._work()
        finally:
            finished.wait()
            release.wait()

    def _work(self) -> None:
        while (job := self._take()) is not None:
            start, k = job
            n = min(self.args.batch, self.args.images - start)
            idx = np.arange(start, start + n) % len(self.pool)
            try:
                out = self.dep.run_vision(self.pool[idx], self.class_emb, early_exit=True)
                emb = out.embeddings
                if emb.shape != (n, self.dep.manifest["embedding_dim"]) or not np.isfinite(emb).all():
                    raise ValueError(f"bad output: shape {emb.shape}, all finite {np.isfinite(emb).all()}")
                self._record(n, out.exit_layer)
            except Exception as e:  # noqa: BLE001 - a soak counts failures, it does not stop on them
                self._fail(f"batch {k}", e)
                self._record(n, None)
            if self.args.text_every and k % self.args.text_every == 0:
                try:
                    emb = self.dep.encode_text(self.texts[k % len(self.texts) :] + self.texts[: k % len(self.texts)])
                    if not np.isfinite(emb).all():
                        raise ValueError("non-finite text embedding")
                    with self.lock:
                        self.text_calls += 1
                except Exception as e:  # noqa: BLE001
                    self._fail(f"text call after batch {k}", e)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("folder", nargs="?", type=Path, help="deployment folder (default: out/int8, else a tiny FP32)")
    ap.add_argument("--images", type=int, default=20_000, help="images to send (default 20,000)")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="CPU")
    ap.add_argument("--hint", choices=["throughput", "latency"], default="throughput")
    ap.add_argument(
        "--precision",
        choices=["auto", "f32", "bf16"],
        default="auto",
        help="CPU inference precision: auto = f32 for FP32/FP16 folders, the plugin's default for INT8",
    )
    ap.add_argument("--warmup", type=int, default=2000, help="images before the baseline RSS is taken")
    ap.add_argument("--every", type=int, default=2000, help="RSS sample interval, in images")
    ap.add_argument("--text-every", type=int, default=50, help="a text request every N batches (0: none)")
    ap.add_argument("--pool", type=int, default=256, help="distinct images cycled through")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = ap.parse_args(argv)
    for name in ("images", "threads", "batch", "every", "pool"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1")
    if not 0 <= args.warmup < args.images:
        ap.error("--warmup must be at least 0 and below --images")

    from ovclip.data.builtin import builtin_classes, builtin_eval
    from ovclip.data.prompts import builtin_templates
    from ovclip.folder import read_manifest
    from ovclip.runtime import Deployment

    command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["soak.py", *argv])
    info = {"command": command, "machine": {**C.machine(), "load_avg": os.getloadavg()}, "versions": C.versions()}
    print(f"command:  {info['command']}")
    m = info["machine"]
    print(f"machine:  {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}, load {m['load_avg']}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v))

    tmp = None
    folder = args.folder or default_folder()
    if folder is None:
        tmp = tempfile.TemporaryDirectory(prefix="ovclip-soak-")
        print("no folder given and no out/int8: exporting a tiny random FP32 CLIP (smoke only)")
        folder = tiny_fp32(Path(tmp.name))
    try:
        manifest = read_manifest(folder, verify=True)
        precision = (
            ("f32" if manifest.variant in ("fp32", "fp16") else None) if args.precision == "auto" else args.precision
        )
        dep = Deployment(folder, args.device, hint=args.hint, inference_precision=precision, verify=False)
        print(
            f"folder:   {folder} ({manifest.variant}, {manifest['source'].get('description')}), "
            f"device {args.device}, hint {args.hint}, precision {dep.executed_precision()}"
        )

        data = builtin_eval()
        sel = np.random.default_rng(0).permutation(len(data))[: args.pool]
        pool = data.pixels(np.sort(sel), dep.preprocess_config)
        labels, prompts = builtin_classes()
        class_emb = dep.class_embeddings(prompts, builtin_templates("eval"))
        texts = [f"a photo of a {p}." for p in prompts]
        probe = pool[: args.batch]

        print(
            f"run:      {args.images:,} images, {args.threads} threads, batch {args.batch}, warm-up {args.warmup:,}, "
            f"RSS every {args.every:,}, text every {args.text_every} batches"
        )
        probe_before = dep.run_vision(probe, class_emb, early_exit=True).embeddings
        soak = Soak(dep, pool, class_emb, args, texts)
        if args.warmup == 0:
            soak.t_warm, soak.rss_warm = time.perf_counter(), rss_bytes()
        finished, release = threading.Barrier(args.threads + 1), threading.Barrier(args.threads + 1)
        threads = [
            threading.Thread(target=soak.worker, args=(finished, release), name=f"soak-{i}")
            for i in range(args.threads)
        ]
        for t in threads:
            t.start()
        finished.wait()  # every worker done, all still alive
        t_end = time.perf_counter()
        rss_end = rss_bytes()
        release.wait()
        for t in threads:
            t.join()
        probe_diff = {"after_vs_before": None, "after_vs_fresh_deployment": None}
        try:
            probe_after = dep.run_vision(probe, class_emb, early_exit=True).embeddings
            fresh = Deployment(folder, args.device, hint=args.hint, inference_precision=precision, verify=False)
            probe_fresh = fresh.run_vision(probe, class_emb, early_exit=True).embeddings
            probe_diff = {
                "after_vs_before": float(np.abs(probe_after - probe_before).max()),
                "after_vs_fresh_deployment": float(np.abs(probe_after - probe_fresh).max()),
            }
        except Exception:  # noqa: BLE001 - reported, the soak figures still stand
            traceback.print_exc()

        after_warm = t_end - soak.t_warm
        ratio = rss_end / soak.rss_warm
        result = {
            **info,
            "folder": str(folder),
            "variant": manifest.variant,
            "source": manifest["source"].get("description"),
            "trained": manifest.trained,
            "device": args.device,
            "hint": args.hint,
            "inference_precision": dep.executed_precision(),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "images": soak.done,
            "batches": soak.batches,
            "text_calls": soak.text_calls,
            "failed_requests": soak.failed,
            "failures": soak.failures,
            "seconds_total": round(t_end - soak.t0, 2),
            "seconds_after_warmup": round(after_warm, 2),
            "images_per_s_after_warmup": round((soak.done - args.warmup) / after_warm, 1) if after_warm > 0 else None,
            "rss_mb_after_warmup": round(soak.rss_warm / 2**20, 1),
            "rss_mb_end": round(rss_end / 2**20, 1),
            "rss_ratio_end_over_warmup": round(ratio, 4),
            "rss_target": f"within {TARGET_RSS_RATIO:.0%}",
            "rss_within_target": abs(ratio - 1) <= TARGET_RSS_RATIO,
            "rss_samples": [
                *soak.samples,
                {"images": soak.done, "seconds": round(t_end - soak.t0, 2), "rss_mb": round(rss_end / 2**20, 1)},
            ],
            "exit_histogram": {str(k): int(v) for k, v in enumerate(soak.exit_counts) if v},
            "probe_max_diff": probe_diff,
        }
    finally:
        if tmp is not None:
            tmp.cleanup()

    print(
        f"result:   {result['images']:,} images in {result['seconds_total']} s; after warm-up "
        f"{result['images_per_s_after_warmup']} img/s; failed requests {result['failed_requests']} "
        f"(text calls {result['text_calls']})"
    )
    print(
        f"memory:   RSS {result['rss_mb_after_warmup']} MB after warm-up -> {result['rss_mb_end']} MB at the end "
        f"(x{result['rss_ratio_end_over_warmup']}, target {result['rss_target']}: "
        f"{'ok' if result['rss_within_target'] else 'MISSED'})"
    )
    print(f"exits:    {result['exit_histogram']}; probe batch max diff {probe_diff}")
    for f in soak.failures[:5]:
        print(f"failure:  {f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return 0 if result["failed_requests"] == 0 and result["rss_within_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
