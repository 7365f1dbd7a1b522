"""`Deployment`: a deployment folder compiled on a device, the API an edge pipeline embeds.

    dep = Deployment("out/int8", device="CPU")
    text = dep.class_embeddings(["sneaker", "bag"], ["a photo of a {}."])
    out = dep.run_vision(pixels, class_embeddings=text)        # early exit per the folder's policy
    out.embeddings, out.exit_layer, out.scores

On devices with dynamic shapes (CPU, GPU) the stages, exit heads, gates and batch compaction of a policy
are joined into one OpenVINO graph (`ovclip.runtime.exit_graph`) and run as one request per batch; a batch of
one image runs on graphs compiled for exactly one image, the exit policy as nested If ops
(`ovclip.runtime.exit_branches`: an image that exits skips the rest of the tower). Static-shape devices (NPU)
run stage by stage from Python (`runtime="stages"` forces that path anywhere).
One compiled model per graph or IR is shared by all threads; each thread gets its own infer requests, so
the object is safe to call from several threads at once.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import openvino as ov
from PIL import Image

from ovclip.data.prompts import all_prompts, ensemble
from ovclip.errors import OvclipError
from ovclip.folder import read_manifest
from ovclip.folder.deployed import deployed_early_exit, deployed_precision
from ovclip.ir import compile_model, read_model
from ovclip.policy.rules import ExitPolicy
from ovclip.preprocess import PreprocessConfig, preprocess
from ovclip.runtime.device import check_device, compile_config, executed_precision
from ovclip.runtime.exit_branches import exit_branches, for_one_image
from ovclip.runtime.exit_graph import exit_graph
from ovclip.runtime.graph_ops import exits_in_graph
from ovclip.tokenizer import ClipTokenizer
from ovclip.vectors import l2_normalize


@dataclass
class VisionOutput:
    embeddings: np.ndarray  # (N, E) float32, L2-normalised
    exit_layer: np.ndarray  # (N,) int32: the block after which each sample left (num_layers = full depth)
    scores: np.ndarray | None  # (N, C) logits against the class embeddings, when given


CLASS_CACHE_SIZE = 64  # label sets whose text embeddings are kept
GRAPH_CACHE_SIZE = 8  # compiled one-graph policies kept (a policy passed at run time compiles its own)
# "graph": one OpenVINO graph per exit policy (dynamic shapes); "stages": stage by stage from Python (any
# device); "auto": the graph where the device can build and compile it, else stages.
Runtime = Literal["auto", "graph", "stages"]
RUNTIMES: tuple[str, ...] = get_args(Runtime)


class Deployment:
    def __init__(
        self,
        folder: str | Path,
        device: str = "CPU",
        *,
        hint: str = "latency",
        inference_precision: str | None = "deployed",
        verify: bool = True,
        streams: int | None = None,
        runtime: Runtime = "auto",
        cache_dir: str | Path | None = "default",
    ):
        """`inference_precision` (CPU): "f32", "bf16", "f16", None (the plugin's default) or "deployed" (the folder's
        recorded choice, `ovclip.folder.deployed`; f32 without one). `cache_dir`: OpenVINO's model cache
        (CACHE_DIR) — "default" caches in ~/.cache/ovclip/ov_cache or $OVCLIP_CACHE_DIR (`ovclip.runtime.device.
        cache_dir_for`), None switches it off, a path caches there."""
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder, verify=verify)
        self.device = check_device(device)
        cpu = self.device.upper().startswith("CPU")
        if inference_precision == "deployed":
            inference_precision = deployed_precision(self.manifest)
        self.deployed_early_exit = deployed_early_exit(self.manifest)  # what run_vision does by default
        self._config = compile_config(self.device, hint, inference_precision if cpu else None, streams, cache_dir)
        self.vision = self.manifest.vision
        self.num_layers: int = self.vision["num_layers"]
        if runtime not in RUNTIMES:
            raise OvclipError(f"runtime={runtime!r}: choose one of {', '.join(RUNTIMES)}", params="runtime")
        static = self.manifest.get("static_batch") is not None
        if runtime == "graph" and static:
            raise OvclipError(
                f"{self.folder}: its IRs have a static batch; runtime='graph' needs dynamic shapes", params="runtime"
            )
        self.runtime = "stages" if runtime == "stages" or static else "graph"
        self._runtime_fallback = runtime == "auto"  # a device that cannot compile the one graph runs stages
        self._one_image = True  # one image: graphs with static shapes and If exits, until a device cannot compile them
        self._graphs: OrderedDict[str, ov.CompiledModel] = OrderedDict()
        self.preprocess_config = PreprocessConfig.load(self.folder / "preprocessor_config.json")
        self.tokenizer = ClipTokenizer.from_file(
            self.folder / "tokenizer.json", self.manifest["text"]["context_length"]
        )
        self.logit_scale = float(self.manifest["logit_scale"])
        policy = self.manifest.get("exit_policy")
        self.policy: ExitPolicy | None = ExitPolicy.from_dict(policy) if policy else None
        emb_policy = self.manifest.get("exit_policy_embedding")
        self.embedding_policy: ExitPolicy | None = ExitPolicy.from_dict(emb_policy) if emb_policy else None
        self._compiled: dict[str, ov.CompiledModel] = {}
        self._lock = threading.Lock()
        self._tls = threading.local()
        self._class_cache: OrderedDict[tuple, np.ndarray] = OrderedDict()
        # Read every IR now: the files checked above are the ones that run, even if the folder is
        # replaced on disk while this object lives.
        self._models = {f: read_model(self.folder / f) for f in self._ir_files()}

    def _ir_files(self) -> list[str]:
        files = [s["file"] for s in self.vision["stages"]] + [self.manifest["text"]["file"]]
        for p in (self.policy, self.embedding_policy):
            if p is not None:
                files += [p.head_file(e) for e in p.exits]
        return list(dict.fromkeys(files))

    # -- compiled models and per-thread requests ---------------------------------------------------
    def compiled(self, file: str) -> ov.CompiledModel:
        with self._lock:
            if file not in self._compiled:
                if file not in self._models:  # an IR of a policy passed at run time
                    self._models[file] = read_model(self.folder / file)
                self._compiled[file] = compile_model(self._models[file], self.device, self._config)
            return self._compiled[file]

    def _request(self, file: str) -> ov.InferRequest:
        reqs = getattr(self._tls, "reqs", None)
        if reqs is None:
            reqs = self._tls.reqs = {}
        if file not in reqs:
            reqs[file] = self.compiled(file).create_infer_request()
        return reqs[file]

    def infer(self, file: str, x: np.ndarray) -> list[np.ndarray]:
        """Run one IR on a batch; a static-batch IR (NPU) is fed in padded chunks of its batch.

        Inputs are always shared, never copied: a request that once wrapped a caller's array and then
        copied into its input tensor would write into that array."""
        compiled = self.compiled(file)
        req = self._request(file)
        batch = compiled.inputs[0].get_partial_shape()[0]
        if batch.is_dynamic or batch.get_length() == len(x):
            res = req.infer({0: x}, share_inputs=True)
            return [np.array(res[o]) for o in compiled.outputs]
        s = batch.get_length()
        parts: list[list[np.ndarray]] = []
        for i in range(0, len(x), s):
            chunk = x[i : i + s]
            n = len(chunk)
            if n < s:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], s - n, axis=0)])
            res = req.infer({0: np.ascontiguousarray(chunk)}, share_inputs=True)
            parts.append([np.array(res[o])[:n] for o in compiled.outputs])
        return [np.concatenate([p[k] for p in parts]) for k in range(len(compiled.outputs))]

    @property
    def stage_files(self) -> list[str]:
        return [s["file"] for s in self.vision["stages"]]

    def executed_precision(self) -> str:
        return executed_precision(self.full_depth_compiled())

    def full_depth_compiled(self) -> ov.CompiledModel:
        """The compiled model that runs the first vision stage at full depth: the joined graph, or stage 0."""
        graph = self._use_graph(None)
        return graph[1] if graph is not None else self.compiled(self.stage_files[0])

    def compile_vision(self, policy: ExitPolicy | None = None, images: int = 0, classes: int = 0) -> None:
        """Compile now what `run_vision` runs with `policy` (None: full depth) on batches of `images` (0: any size
        but one) scored against `classes` class embeddings, instead of on its first call: the one graph, or the
        stages and that policy's exit heads."""
        if self._use_graph(policy, images, classes) is None:
            for f in self.stage_files + ([policy.head_file(e) for e in policy.exits] if policy else []):
                self.compiled(f)

    def _use_graph(
        self, policy: ExitPolicy | None, images: int = 0, classes: int = 0
    ) -> tuple[str, ov.CompiledModel] | None:
        """The one-graph model for `policy` — for a single image, compiled for exactly one image (and `classes`
        class embeddings where the rule scores them), exits as If branches — or None where the stage path runs:
        static-batch folders, `runtime="stages"`, or (with `runtime="auto"`) a device that cannot build or compile
        the graph. A device that cannot compile the one-image form runs the batch graph for single images too."""
        if self.runtime != "graph":
            return None
        if images == 1 and self._one_image:
            try:
                return self._graph(policy, one_image=True, classes=classes)
            except OvclipError:
                self._one_image = False
        try:
            return self._graph(policy)
        except OvclipError:
            if not self._runtime_fallback:
                raise
            self.runtime = "stages"  # e.g. a plugin without NonZero on dynamic shapes: the Python path
            return None

    # -- text --------------------------------------------------------------------------------------
    def encode_text(self, texts: Sequence[str], batch: int = 64) -> np.ndarray:
        """(N, E) L2-normalised text embeddings."""
        return l2_normalize(self._text_outputs(texts, batch))

    def _text_outputs(self, texts: Sequence[str], batch: int = 64) -> np.ndarray:
        """(N, E) float32 text-tower outputs, not normalised."""
        if isinstance(texts, str):
            texts = [texts]
        if len(texts) == 0:
            raise OvclipError("no text to encode")
        file = self.manifest["text"]["file"]
        out = [self.infer(file, self.tokenizer(list(texts[i : i + batch])))[0] for i in range(0, len(texts), batch)]
        return np.concatenate(out).astype(np.float32)

    def class_embeddings(self, prompt_names: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        """(C, E): per class, the mean of its normalised prompt embeddings over templates, renormalised
        (`ovclip.data.prompts.ensemble`)."""
        key = (tuple(prompt_names), tuple(templates))
        with self._lock:
            hit = self._class_cache.get(key)
            if hit is not None:
                self._class_cache.move_to_end(key)
                return hit
        prompts = all_prompts(list(prompt_names), list(templates))
        out = ensemble(self._text_outputs(prompts).reshape(len(prompt_names), len(templates), -1))
        with self._lock:
            self._class_cache[key] = out
            while len(self._class_cache) > CLASS_CACHE_SIZE:
                self._class_cache.popitem(last=False)
        return out

    # -- images ------------------------------------------------------------------------------------
    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        return np.stack([preprocess(im, self.preprocess_config) for im in images])

    def run_vision(
        self,
        pixels: np.ndarray,
        class_embeddings: np.ndarray | None = None,
        *,
        early_exit: bool | None = None,
        policy: ExitPolicy | None = None,
    ) -> VisionOutput:
        """Full depth, or early exit per `policy` (default: the folder's): a sample leaves the batch at the first
        exit whose rule lets it go; `early_exit=False` runs every sample to the end (None: on with a `policy` given,
        else the folder's deployed choice, `deployed_early_exit`: on where it has a policy, unless it deploys
        full depth)."""
        pixels = np.ascontiguousarray(pixels, dtype=np.float32)
        size = self.vision["image_size"]
        if pixels.ndim != 4 or pixels.shape[1:] != (3, size, size):
            raise OvclipError(
                f"{self.folder}: images must be a (N, 3, {size}, {size}) array (see Deployment.preprocess); "
                f"got shape {pixels.shape}"
            )
        if early_exit is None:  # a policy passed here is meant to run
            early_exit = policy is not None or self.deployed_early_exit
        if policy is None:
            policy = self.policy if class_embeddings is not None else self.embedding_policy
        use_exits = early_exit and policy is not None
        if use_exits and policy.needs_labels and class_embeddings is None:
            raise OvclipError(f"{self.folder}: its exit rule '{policy.rule}' needs class embeddings (a label set)")
        chosen = policy if use_exits else None
        graph = self._use_graph(chosen, len(pixels), 0 if class_embeddings is None else len(class_embeddings))
        if graph is not None:
            embeddings, exit_layer = self._run_graph(graph, pixels, class_embeddings)
        else:
            embeddings, exit_layer = self._run_stages(pixels, class_embeddings, chosen)
        scores = self.logit_scale * embeddings @ class_embeddings.T if class_embeddings is not None else None
        return VisionOutput(embeddings, exit_layer, scores)

    def _graph(
        self, policy: ExitPolicy | None, one_image: bool = False, classes: int = 0
    ) -> tuple[str, ov.CompiledModel]:
        """The compiled one-graph model for `policy` (None: full depth), built on first use and cached: batch
        compaction (`exit_graph`), or with `one_image` a graph for exactly one image whose exits are If branches
        (`exit_branches`; full depth and policies without a threshold: `exit_graph` with static shapes)."""
        spec = None if policy is None else {k: v for k, v in policy.to_dict().items() if k != "info"}
        branches = one_image and bool(exits_in_graph(policy)[0])
        scored = branches and policy.needs_labels
        key = f"one:{classes if scored else ''}:" if one_image else "graph:"
        key += json.dumps(spec, sort_keys=True)
        with self._lock:
            hit = self._graphs.get(key)
            if hit is not None:
                self._graphs.move_to_end(key)
                return key, hit
        stages = [self._models[s["file"]].clone() for s in self.vision["stages"]]
        ends = [s["blocks"][1] for s in self.vision["stages"]]
        heads = {}
        if policy is not None:
            for e in policy.exits:
                f = policy.head_file(e)
                if f not in self._models:  # a policy passed at run time
                    self._models[f] = read_model(self.folder / f)
                heads[e] = self._models[f].clone()
        emb = int(self.manifest["embedding_dim"])
        build = exit_branches if branches else exit_graph
        model = build(stages, ends, heads, policy, emb)
        if one_image:
            model = for_one_image(model, classes if scored else None)
        compiled = compile_model(model, self.device, self._config)
        with self._lock:
            self._graphs[key] = compiled
            while len(self._graphs) > GRAPH_CACHE_SIZE:
                self._graphs.popitem(last=False)
        return key, compiled

    def _run_graph(
        self, graph: tuple[str, ov.CompiledModel], pixels: np.ndarray, class_embeddings: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        key, compiled = graph
        reqs: dict[str, tuple[ov.CompiledModel, ov.InferRequest]] | None = getattr(self._tls, "graph_reqs", None)
        if reqs is None:
            reqs = self._tls.graph_reqs = {}
        mine = reqs.get(key)
        if mine is None or mine[0] is not compiled:
            for stale in [k for k in reqs if k not in self._graphs]:  # evicted graphs: free this thread's request
                del reqs[stale]
            mine = reqs[key] = (compiled, compiled.create_infer_request())
        req = mine[1]
        inputs: dict = {0: pixels}
        if len(compiled.inputs) > 1:
            inputs[1] = np.ascontiguousarray(self.logit_scale * class_embeddings, dtype=np.float32)
        req.infer(inputs, share_inputs=True)
        return req.get_output_tensor(0).data.copy(), req.get_output_tensor(1).data.copy()

    def _run_stages(
        self, pixels: np.ndarray, class_embeddings: np.ndarray | None, policy: ExitPolicy | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The same computation stage by stage from Python (static-shape devices; the reference path)."""
        n = len(pixels)
        emb_dim = int(self.manifest["embedding_dim"])
        embeddings = np.zeros((n, emb_dim), np.float32)
        exit_layer = np.full(n, self.num_layers, np.int32)
        active = np.arange(n)
        h = pixels
        prev: np.ndarray | None = None
        prev_scores: np.ndarray | None = None
        for stage in self.vision["stages"]:
            out = self.infer(stage["file"], h)[0]
            end = stage["blocks"][1]
            if end == self.num_layers:
                embeddings[active] = l2_normalize(out)
                break
            if policy is not None and end in policy.exits:
                head_emb, sav = self.infer(policy.head_file(end), out)[:2]
                head_emb = l2_normalize(head_emb)
                scores = self.logit_scale * head_emb @ class_embeddings.T if class_embeddings is not None else None
                leave = policy.decide(end, head_emb, sav.reshape(-1), scores, prev, prev_scores)
                if leave.any():
                    embeddings[active[leave]] = head_emb[leave]
                    exit_layer[active[leave]] = end
                    keep = ~leave
                    active, out, head_emb = active[keep], out[keep], head_emb[keep]
                    scores = None if scores is None else scores[keep]
                prev, prev_scores = head_emb, scores
                if len(active) == 0:
                    break
            h = np.ascontiguousarray(out)
        return embeddings, exit_layer

    def encode_images(self, pixels: np.ndarray, *, early_exit: bool = False) -> np.ndarray:
        """(N, E) L2-normalised image embeddings; full depth unless `early_exit` (label-free rule only)."""
        return self.run_vision(pixels, early_exit=early_exit).embeddings

    def classify(
        self,
        pixels: np.ndarray,
        prompt_names: Sequence[str],
        templates: Sequence[str],
        *,
        early_exit: bool | None = None,
    ) -> VisionOutput:
        return self.run_vision(pixels, self.class_embeddings(prompt_names, templates), early_exit=early_exit)


def trace_vision(dep: Deployment, pixels: np.ndarray, policy: ExitPolicy) -> dict:
    """Full depth with every exit head of `policy` evaluated on every sample (no sample leaves).

    Returns {"heads": {L: (normalised head embedding, SAV)}, "final": normalised full-depth embedding};
    with it any thresholds can be tried offline (ovclip.policy.cascade) without running the model again.
    """
    pixels = np.ascontiguousarray(pixels, dtype=np.float32)
    heads: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    h = pixels
    final = None
    for stage in dep.vision["stages"]:
        out = dep.infer(stage["file"], h)[0]
        end = stage["blocks"][1]
        if end == dep.num_layers:
            final = l2_normalize(out)
            break
        if end in policy.exits:
            emb, sav = dep.infer(policy.head_file(end), out)[:2]
            heads[end] = (l2_normalize(emb), sav.reshape(-1))
        h = np.ascontiguousarray(out)
    return {"heads": heads, "final": final}
