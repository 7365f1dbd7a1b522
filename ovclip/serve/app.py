"""The Ray Serve application: a FastAPI ingress deployment (N replicas, each with its own `Deployment`) and a
one-replica metrics store.

Each replica batches concurrent image requests with `@serve.batch` (at most `max_batch_images` images, at most
`batch_wait_s` of waiting, as many batches in flight as OpenVINO has optimal infer requests) into the
deployment's compacting early-exit graph; decoding and inference run in threads, so the event loop keeps
taking requests. Routes: see `ovclip.serve.protocol` (/v1) and `ovclip.serve.kserve` (/v2).
"""

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from ovclip import __version__
from ovclip.data.label_sets import BUILTIN, builtin_label_set
from ovclip.errors import OvclipError, first_line
from ovclip.runtime import Deployment, VisionOutput
from ovclip.serve import kserve
from ovclip.serve.decode import decode_image
from ovclip.serve.engine import Engine, VisionJob, classify_results, embed_result
from ovclip.serve.errors import RequestError, bad_request, too_large
from ovclip.serve.metrics import MetricsStore, ReplicaMetrics, render
from ovclip.serve.models import V2Model, v2_models
from ovclip.serve.observe import Observe
from ovclip.serve.options import ServeOptions
from ovclip.serve.protocol import (
    check_count,
    classify_options,
    images_from_json,
    parse_bool,
    parse_json,
    texts_from_json,
)

log = logging.getLogger("ovclip.serve")
api = FastAPI(title="ovclip", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
api.add_middleware(Observe)
PUSH_PERIOD_S = 1.0


@api.exception_handler(RequestError)
async def _request_error(request: Request, e: RequestError) -> JSONResponse:
    request.state.error_kind = e.kind
    return JSONResponse({"error": str(e)}, status_code=e.status)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    request.state.error_kind = "not_found" if e.status_code == 404 else "bad_request"
    what = f"no route {request.method} {request.url.path}" if e.status_code == 404 else str(e.detail)
    return JSONResponse({"error": f"{what}; see GET /health for the endpoints"}, status_code=e.status_code)


@api.exception_handler(Exception)
async def _internal_error(request: Request, e: Exception) -> JSONResponse:
    log.exception("request failed")
    what = str(e) if isinstance(e, OvclipError) else f"{type(e).__name__}: {first_line(e, limit=300)}"
    return JSONResponse({"error": f"internal error: {what}"}, status_code=500)


def _json(obj) -> Response:
    return Response(json.dumps(obj).encode(), media_type="application/json")


ENDPOINTS = [
    "POST /v1/embed/image",
    "POST /v1/embed/text",
    "POST /v1/classify",
    "GET /v1/label_sets",
    "GET /health",
    "GET /metrics",
    "GET /v2/health/ready",
    "GET /v2/models/{name}",
    "POST /v2/models/{name}/infer",
]


async def _multipart(request: Request, max_files: int) -> tuple[list[tuple[str, bytes]], dict]:
    """Files of field `file` and the other fields (a field sent several times becomes a list)."""
    try:
        form = await request.form(max_files=max_files, max_fields=1000)
    except StarletteHTTPException as e:
        raise bad_request(f"malformed multipart body ({e.detail})") from None
    items, fields = [], {}
    for i, value in enumerate(form.getlist("file")):
        if isinstance(value, str):
            raise bad_request(f"file[{i}]: a text field; send the image as a file part (filename=...)")
        items.append((f"file[{i}] {value.filename!r}", await value.read()))
    for key in {k for k in form if k != "file"}:
        values = form.getlist(key)
        fields[key] = values[0] if len(values) == 1 else list(values)
    await form.close()
    return items, fields


def _optimal_requests(dep: Deployment) -> int:
    try:
        return max(1, int(dep.full_depth_compiled().get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    except (RuntimeError, OvclipError):
        return 1


@serve.deployment
@serve.ingress(api)
class OvclipServer:
    def __init__(self, options: ServeOptions, store) -> None:
        self.opt = options
        dep = Deployment(options.folder, options.device, hint=options.hint)
        sets = {BUILTIN: builtin_label_set(), **{ls.name: ls for ls in options.label_sets}}
        self.engine = Engine(dep, sets)
        self.models: dict[str, V2Model] = v2_models(dep, options.model_name)
        self.metrics = ReplicaMetrics(dep.num_layers)
        api.state.metrics = self.metrics
        api.state.metrics_changed = self._mark_dirty
        streams = _optimal_requests(dep)
        self.pool = ThreadPoolExecutor(streams, thread_name_prefix="ovclip-infer")
        self.batched = serve.batch(
            max_batch_size=options.max_batch_images,
            batch_wait_timeout_s=options.batch_wait_s,
            max_concurrent_batches=streams,
            batch_size_fn=lambda jobs: sum(len(j.pixels) for j in jobs),
        )(self._infer_batch)
        self.store = store
        self.replica = serve.get_replica_context().replica_id.unique_id
        self._pusher: asyncio.Task | None = None
        self._dirty = False
        self._warm_up(dep)

    def _warm_up(self, dep: Deployment) -> None:
        """Compile every graph and encode the saved label sets now, so the first requests do not pay for it."""
        size = dep.vision["image_size"]
        pixels = np.zeros((1, 3, size, size), np.float32)
        dep.run_vision(pixels)
        for labels in self.engine.label_sets.values():
            dep.run_vision(pixels, self.engine.class_embeddings(labels))
        dep.encode_text(["warm up"])

    # -- batching ----------------------------------------------------------------------------------
    async def _infer_batch(self, jobs: list[VisionJob]) -> list[VisionOutput]:
        start = time.perf_counter()
        for job in jobs:
            self.metrics.stage.labels("queue").observe(start - job.queued_at)
        outs = await asyncio.get_running_loop().run_in_executor(self.pool, self.engine.run_jobs, jobs)
        took = time.perf_counter() - start
        self.metrics.batch_images.observe(sum(len(j.pixels) for j in jobs))
        self.metrics.batch_seconds.observe(took)
        for _ in jobs:
            self.metrics.stage.labels("inference").observe(took)
        return outs

    async def _vision(self, pixels: np.ndarray, **what) -> VisionOutput:
        """Run images through the batcher in chunks of at most max_batch_images; outputs in input order."""
        n, now = self.opt.max_batch_images, time.perf_counter()
        jobs = [VisionJob(pixels[i : i + n], queued_at=now, **what) for i in range(0, len(pixels), n)]
        outs = await asyncio.gather(*(self.batched(job) for job in jobs))
        if len(outs) == 1:
            return outs[0]
        scores = None if outs[0].scores is None else np.concatenate([o.scores for o in outs])
        return VisionOutput(
            np.concatenate([o.embeddings for o in outs]), np.concatenate([o.exit_layer for o in outs]), scores
        )

    # -- request bodies ----------------------------------------------------------------------------
    async def _body(self, request: Request) -> bytes:
        limit = self.opt.limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise too_large(f"request body of {int(declared):,} bytes is over the server's limit of {limit:,}")
        body = await request.body()
        if len(body) > limit:
            raise too_large(f"request body of {len(body):,} bytes is over the server's limit of {limit:,}")
        return body

    async def _images_and_fields(self, request: Request) -> tuple[np.ndarray, dict]:
        """Decoded, preprocessed images and the other fields, from a multipart or a JSON body."""
        t0 = time.perf_counter()
        body = await self._body(request)
        ctype = request.headers.get("content-type", "").lower()
        if ctype.startswith("multipart/form-data"):
            items, fields = await _multipart(request, self.opt.limits.max_images)
        elif ctype.startswith("application/json") or body.lstrip().startswith(b"{"):
            fields = parse_json(body)
            items = images_from_json(fields, self.opt.limits)
        else:
            raise RequestError(415, "bad_request", "send multipart/form-data (field 'file') or application/json")
        check_count(len(items), self.opt.limits)
        fields.setdefault("early_exit", request.query_params.get("early_exit"))
        t1 = time.perf_counter()
        pixels = await asyncio.to_thread(self._decode, items)
        self.metrics.stage.labels("read").observe(t1 - t0)
        self.metrics.stage.labels("decode").observe(time.perf_counter() - t1)
        return pixels, fields

    def _decode(self, items: list[tuple[str, bytes]]) -> np.ndarray:
        return self.engine.preprocess([decode_image(data, what, self.opt.limits) for what, data in items])

    def _respond(self, obj, endpoint: str, images: int) -> Response:
        t0 = time.perf_counter()
        response = _json(obj)
        self.metrics.stage.labels("respond").observe(time.perf_counter() - t0)
        self.metrics.images.labels(endpoint).inc(images)
        return response

    def _observe_exits(self, out: VisionOutput) -> None:
        for block in out.exit_layer.tolist():
            self.metrics.exits.observe(block)

    # -- /v1 ---------------------------------------------------------------------------------------
    @api.post("/v1/embed/image")
    async def embed_image(self, request: Request) -> Response:
        pixels, fields = await self._images_and_fields(request)
        out = await self._vision(pixels, early_exit=parse_bool(fields.get("early_exit"), "early_exit", True))
        self._observe_exits(out)
        return self._respond(embed_result(out), "/v1/embed/image", len(pixels))

    @api.post("/v1/classify")
    async def classify(self, request: Request) -> Response:
        pixels, fields = await self._images_and_fields(request)
        opts = classify_options(fields, self.opt.limits)
        labels = self.engine.label_set(opts)
        cls = await asyncio.to_thread(self.engine.class_embeddings, labels)
        early = parse_bool(fields.get("early_exit"), "early_exit", True)
        out = await self._vision(pixels, early_exit=early, labels=labels, class_embeddings=cls)
        self._observe_exits(out)
        return self._respond({"results": classify_results(out, labels, opts.top_k)}, "/v1/classify", len(pixels))

    @api.post("/v1/embed/text")
    async def embed_text(self, request: Request) -> Response:
        texts = texts_from_json(parse_json(await self._body(request)), self.opt.limits)
        emb = await asyncio.get_running_loop().run_in_executor(self.pool, self.engine.encode_text, texts)
        return self._respond({"embeddings": emb.tolist()}, "/v1/embed/text", 0)

    @api.get("/v1/label_sets")
    async def label_sets(self) -> Response:
        return _json({"label_sets": [ls.to_dict() for ls in self.engine.label_sets.values()]})

    @api.get("/health")
    async def health(self) -> Response:
        dep = self.engine.dep
        return _json(
            {
                "status": "ok",
                "version": __version__,
                "folder": self.opt.folder,
                "variant": dep.manifest.variant,
                "device": dep.device,
                "runtime": dep.runtime,
                "num_layers": dep.num_layers,
                "exits": dep.vision.get("exits", []),
                "label_sets": sorted(self.engine.label_sets),
                "models": sorted(self.models),
                "replica": self.replica,
                "actor": ray.get_runtime_context().get_actor_name(),
                "endpoints": ENDPOINTS,
            }
        )

    # -- metrics -----------------------------------------------------------------------------------
    def _mark_dirty(self) -> None:
        """New counts: pushed to the store within PUSH_PERIOD_S, counts that arrive during a push included."""
        self._dirty = True
        if self._pusher is None or self._pusher.done():
            self._pusher = asyncio.get_running_loop().create_task(self._push_loop())

    async def _push_loop(self) -> None:
        while self._dirty:
            await asyncio.sleep(PUSH_PERIOD_S)
            self._dirty = False
            await self._push()

    async def _push(self) -> None:
        try:
            await self.store.push.remote(self.replica, self.metrics.snapshot())
        except Exception as e:  # noqa: BLE001 - serving goes on; the next push retries
            log.warning("metrics push failed: %s", e)

    @api.get("/metrics")
    async def prometheus(self) -> Response:
        await self._push()
        try:
            families, replicas = await self.store.merged.remote()
        except Exception as e:  # noqa: BLE001
            raise RequestError(503, "metrics_unavailable", f"metrics store unavailable ({e}); retry") from None
        return Response(render(families, replicas), media_type="text/plain; version=0.0.4; charset=utf-8")

    # -- KServe v2 ---------------------------------------------------------------------------------
    @api.get("/v2")
    async def v2_server(self) -> Response:
        return _json({"name": "ovclip", "version": __version__, "extensions": ["binary_tensor_data"]})

    @api.get("/v2/health/live")
    @api.get("/v2/health/ready")
    async def v2_health(self) -> Response:
        return _json({})

    def _model(self, name: str) -> V2Model:
        model = self.models.get(name)
        if model is None:
            raise kserve.unknown_model(name, sorted(self.models))
        return model

    @api.get("/v2/models/{name}")
    @api.get("/v2/models/{name}/versions/{version}")
    async def v2_metadata(self, name: str) -> Response:
        return _json(self._model(name).spec.metadata())

    @api.get("/v2/models/{name}/ready")
    @api.get("/v2/models/{name}/versions/{version}/ready")
    async def v2_ready(self, name: str) -> Response:
        self._model(name)
        return _json({"name": name, "ready": True})

    @api.post("/v2/models/{name}/infer")
    @api.post("/v2/models/{name}/versions/{version}/infer")
    async def v2_infer(self, name: str, request: Request) -> Response:
        model = self._model(name)
        body = await self._body(request)
        length = request.headers.get(kserve.HEADER)
        if length is not None and not length.isdigit():
            raise bad_request(f"Inference-Header-Content-Length {length!r} is not a number")
        req = kserve.parse_infer(body, None if length is None else int(length), model.spec)
        values = await self._v2_values(model, req.inputs)
        payload, headers = kserve.infer_response(model.spec, req, values)
        return Response(payload, headers=headers)

    async def _v2_values(self, model: V2Model, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if model.kind == "text":
            ids = inputs["input_ids"]
            return {"text_embeds": await asyncio.to_thread(model.run_text, self.engine.dep, ids)}
        pixels = inputs["pixel_values"]
        if len(pixels) > self.opt.limits.max_images:
            raise too_large(f"{len(pixels)} images is over the server's limit of {self.opt.limits.max_images}")
        given = inputs.get("class_embeddings")
        cls = None if given is None else given / np.float32(self.engine.dep.logit_scale)
        out = await self._vision(np.ascontiguousarray(pixels), class_embeddings=cls)
        self._observe_exits(out)
        self.metrics.images.labels("/v2/infer").inc(len(pixels))
        return {"image_embeds": out.embeddings, "exit_layer": out.exit_layer.astype(np.int32)}


MetricsStoreDeployment = serve.deployment(MetricsStore, name="MetricsStore", num_replicas=1)


def application(options: ServeOptions):
    """The bound Serve application for `serve.run`."""
    store = MetricsStoreDeployment.options(ray_actor_options={"num_cpus": 0}).bind()
    server = OvclipServer.options(
        num_replicas=options.replicas,
        max_ongoing_requests=options.max_ongoing_requests,
        ray_actor_options={"num_cpus": options.cpus_per_replica},
        health_check_period_s=options.health_check_period_s,
        max_constructor_retry_count=2,
    )
    return server.bind(options, store)
