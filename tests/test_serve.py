"""`ovclip serve` on a real local Ray Serve instance (127.0.0.1, 2 CPUs): every endpoint against the in-process
`Deployment` on real Fashion-MNIST PNGs, tritonclient over KServe v2, each bad request's 4xx with the server
still serving, /metrics totals, and a replica killed under load being replaced. One server for the module."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serve_folder import early_exit_folder, fashion_pngs

pytest.importorskip("ray.serve", reason="the serve extra: pip install 'ovclip[serve]'")
import httpx  # noqa: E402

from ovclip.data.images import load_image  # noqa: E402
from ovclip.data.label_sets import builtin_label_set, make_label_set  # noqa: E402
from ovclip.runtime import Deployment  # noqa: E402
from ovclip.serve import Limits, ServeOptions, start_server  # noqa: E402

MAX_IMAGE_BYTES = 60_000
SMALL = make_label_set(["sneaker", "coat", "bag"], ["a photo of a {}."], name="small")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def folder(fp32_folder, tmp_path_factory) -> Path:
    return early_exit_folder(fp32_folder, tmp_path_factory)


@pytest.fixture(scope="module")
def server(folder):
    options = ServeOptions(
        str(folder),
        replicas=2,
        batch_wait_s=0.02,
        label_sets=(SMALL,),
        limits=Limits(max_image_bytes=MAX_IMAGE_BYTES),
        health_check_period_s=1.0,
    )
    running = start_server(options, port=_free_port(), ray_init={"num_cpus": 2, "object_store_memory": 100 * 2**20})
    with httpx.Client(base_url=running.url, timeout=60) as client:
        yield running, client
    running.stop()


@pytest.fixture(scope="module")
def client(server) -> httpx.Client:
    return server[1]


@pytest.fixture(scope="module")
def dep(folder) -> Deployment:
    return Deployment(folder, hint="throughput")


@pytest.fixture(scope="module")
def pngs() -> list[bytes]:
    return fashion_pngs(12)


@pytest.fixture(scope="module")
def pixels(dep, pngs, tmp_path_factory) -> np.ndarray:
    """The reference pixels: each PNG written to a file and read by the library's file loader."""
    root = tmp_path_factory.mktemp("pngs")
    paths = []
    for i, b in enumerate(pngs):
        paths.append(root / f"{i}.png")
        paths[-1].write_bytes(b)
    return dep.preprocess([load_image(p) for p in paths])


def _files(pngs: list[bytes]) -> list:
    return [("file", (f"{i}.png", b, "image/png")) for i, b in enumerate(pngs)]


def _b64(pngs: list[bytes]) -> list[str]:
    return [base64.b64encode(b).decode() for b in pngs]


def test_embed_image_multipart_matches_deployment(client, dep, pngs, pixels):
    r = client.post("/v1/embed/image", files=_files(pngs))
    assert r.status_code == 200, r.text
    body = r.json()
    ref = dep.run_vision(pixels)  # no labels: the folder's label-free (agreement) policy
    np.testing.assert_array_equal(body["exit_blocks"], ref.exit_layer)
    np.testing.assert_allclose(np.array(body["embeddings"], np.float32), ref.embeddings, atol=1e-5)
    assert len(set(body["exit_blocks"])) >= 2, body["exit_blocks"]  # images really leave at different blocks


def test_embed_image_base64_json_without_early_exit(client, dep, pngs, pixels):
    r = client.post("/v1/embed/image", json={"images": _b64(pngs[:5]), "early_exit": False})
    assert r.status_code == 200, r.text
    ref = dep.run_vision(pixels[:5], early_exit=False)
    assert r.json()["exit_blocks"] == [dep.num_layers] * 5
    np.testing.assert_allclose(np.array(r.json()["embeddings"], np.float32), ref.embeddings, atol=1e-5)


def _check_results(results, ref, labels, top_k):
    for i, res in enumerate(results):
        order = np.argsort(-ref.scores[i], kind="stable")[:top_k]
        assert res["labels"] == [labels[j] for j in order]
        np.testing.assert_allclose(res["scores"], ref.scores[i, order], atol=1e-4)
        assert res["exit_block"] == ref.exit_layer[i]
        assert res["scores"] == sorted(res["scores"], reverse=True)


def test_classify_with_labels_form_field_and_saved_label_sets(client, dep, pngs, pixels):
    from ovclip.data.prompts import builtin_templates

    labels = ["pair of trousers", "sandal", "dress", "bag"]
    r = client.post("/v1/classify", files=_files(pngs), data={"labels": ",".join(labels)})
    assert r.status_code == 200, r.text
    ref = dep.run_vision(pixels, dep.class_embeddings(labels, builtin_templates("eval")))
    _check_results(r.json()["results"], ref, labels, 4)
    for res in r.json()["results"]:
        assert abs(sum(res["probabilities"]) - 1) < 1e-6

    fm = builtin_label_set()
    r = client.post("/v1/classify", json={"images": _b64(pngs), "label_set": "fashion-mnist", "top_k": 3})
    assert r.status_code == 200, r.text
    ref = dep.run_vision(pixels, dep.class_embeddings(list(fm.prompt_names), list(fm.templates)))
    _check_results(r.json()["results"], ref, list(fm.labels), 3)
    assert len({res["exit_block"] for res in r.json()["results"]}) >= 2

    r = client.post("/v1/classify", json={"images": _b64(pngs[:3]), "label_set": "small"})
    assert r.status_code == 200, r.text
    ref = dep.run_vision(pixels[:3], dep.class_embeddings(list(SMALL.prompt_names), list(SMALL.templates)))
    _check_results(r.json()["results"], ref, list(SMALL.labels), 3)


def test_embed_text_matches_deployment(client, dep):
    texts = ["a photo of a sneaker.", "a red coat", "ünïcode téxt"]
    r = client.post("/v1/embed/text", json={"texts": texts})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.array(r.json()["embeddings"], np.float32), dep.encode_text(texts), atol=1e-5)


def test_tritonclient_kserve_v2_returns_the_deployments_outputs(server, dep, pixels):
    import tritonclient.http as triton

    url = server[0].url.removeprefix("http://")
    c = triton.InferenceServerClient(url=url)
    try:
        assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("ovclip-vision")
        meta = c.get_model_metadata("ovclip-vision-classify")
        assert [t["name"] for t in meta["inputs"]] == ["pixel_values", "class_embeddings"]
        for binary in (True, False):
            inp = triton.InferInput("pixel_values", list(pixels.shape), "FP32")
            inp.set_data_from_numpy(pixels, binary_data=binary)
            outs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("image_embeds", "exit_layer")]
            res = c.infer("ovclip-vision", [inp], outputs=outs)
            ref = dep.run_vision(pixels)
            np.testing.assert_allclose(res.as_numpy("image_embeds"), ref.embeddings, atol=1e-5)
            np.testing.assert_array_equal(res.as_numpy("exit_layer"), ref.exit_layer)
        fm = builtin_label_set()
        cls = dep.class_embeddings(list(fm.prompt_names), list(fm.templates))
        scaled = (dep.logit_scale * cls).astype(np.float32)
        cin = triton.InferInput("class_embeddings", list(scaled.shape), "FP32")
        cin.set_data_from_numpy(scaled)
        inp = triton.InferInput("pixel_values", list(pixels.shape), "FP32")
        inp.set_data_from_numpy(pixels)
        res = c.infer("ovclip-vision-classify", [inp, cin])
        ref = dep.run_vision(pixels, cls)
        np.testing.assert_array_equal(res.as_numpy("exit_layer"), ref.exit_layer)
        np.testing.assert_allclose(res.as_numpy("image_embeds"), ref.embeddings, atol=1e-5)
        ids = dep.tokenizer(["a photo of a bag."])
        tin = triton.InferInput("input_ids", list(ids.shape), "INT64")
        tin.set_data_from_numpy(ids)
        text = c.infer("ovclip-text", [tin]).as_numpy("text_embeds")
        np.testing.assert_allclose(text / np.linalg.norm(text), dep.encode_text(["a photo of a bag."]), atol=1e-5)
    finally:
        c.close()


def _large_png() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    assert len(buf.getvalue()) > MAX_IMAGE_BYTES
    return buf.getvalue()


BAD_REQUESTS = [
    (
        "not an image",
        "post",
        "/v1/embed/image",
        {"files": [("file", ("x.png", b"plain text", "image/png"))]},
        415,
        "not an image",
    ),
    (
        "truncated image",
        "post",
        "/v1/classify",
        {"json": {"images": "TRUNCATED", "labels": ["a"]}},
        400,
        "truncated or corrupt",
    ),
    ("image over the size limit", "post", "/v1/embed/image", {"files": "LARGE"}, 413, "over the server's limit"),
    ("empty label list", "post", "/v1/classify", {"json": {"images": "B64", "labels": []}}, 400, '"labels" is empty'),
    ("malformed JSON", "post", "/v1/embed/text", {"content": b'{"texts": ['}, 400, "malformed JSON"),
    ("unknown model", "post", "/v2/models/resnet/infer", {"json": {"inputs": []}}, 404, "unknown model 'resnet'"),
    (
        "unknown label set",
        "post",
        "/v1/classify",
        {"json": {"images": "B64", "label_set": "dogs"}},
        404,
        "unknown label_set 'dogs'",
    ),
    (
        "wrong v2 shape",
        "post",
        "/v2/models/ovclip-vision/infer",
        {"json": {"inputs": [{"name": "pixel_values", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": [0] * 192}]}},
        400,
        "does not fit the model's [-1, 3, 64, 64]",
    ),
    ("unknown route", "get", "/v1/nothing", {}, 404, "no route GET /v1/nothing"),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_gets_its_4xx_and_the_next_good_request_succeeds(client, dep, pngs, pixels, case):
    _, method, path, kwargs, status, message = case
    kwargs = dict(kwargs)
    if kwargs.get("files") == "LARGE":
        kwargs["files"] = [("file", ("big.png", _large_png(), "image/png"))]
    if "json" in kwargs and kwargs["json"].get("images") == "B64":
        kwargs["json"] = {**kwargs["json"], "images": _b64(pngs[:1])}
    if "json" in kwargs and kwargs["json"].get("images") == "TRUNCATED":
        kwargs["json"] = {**kwargs["json"], "images": _b64([pngs[0][: len(pngs[0]) // 2]])}
    r = getattr(client, method)(path, **kwargs)
    assert r.status_code == status, r.text
    assert message in r.json()["error"], r.json()
    good = client.post("/v1/embed/image", files=_files(pngs[:2]))
    assert good.status_code == 200, good.text
    np.testing.assert_allclose(np.array(good.json()["embeddings"]), dep.run_vision(pixels[:2]).embeddings, atol=1e-5)


def _metrics(client) -> dict[tuple, float]:
    from prometheus_client.parser import text_string_to_metric_families

    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(r.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _settled_metrics(client) -> dict[tuple, float]:
    """/metrics once every replica has pushed its latest counts (they push within a second of a request)."""

    def counts(m):  # (the /metrics requests themselves are counted too: leave them out)
        return {k: v for k, v in m.items() if k[0] == "ovclip_requests_total" and ("endpoint", "/metrics") not in k[1]}

    last = _metrics(client)
    for _ in range(20):
        time.sleep(1.2)
        now = _metrics(client)
        if counts(now) == counts(last):
            return now
        last = now
    raise AssertionError("/metrics did not settle")


def _get(m, name, **labels) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def test_concurrent_requests_are_batched_and_counted_in_metrics(client, dep, pngs, pixels):
    before = _settled_metrics(client)
    bad = client.post("/v1/classify", json={"images": _b64(pngs[:1]), "labels": []})
    assert bad.status_code == 400
    results: dict[int, httpx.Response] = {}

    def one(i: int) -> None:
        results[i] = client.post("/v1/embed/image", files=_files([pngs[i % len(pngs)]]))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    ref = dep.run_vision(pixels)
    blocks = []
    for i, r in sorted(results.items()):
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["embeddings"][0], ref.embeddings[i % len(pngs)], atol=1e-5)
        blocks += r.json()["exit_blocks"]
    assert len(results) == 16
    key = {"endpoint": "/v1/embed/image", "code": "200"}
    after = _settled_metrics(client)
    assert _get(after, "ovclip_requests_total", **key) - _get(before, "ovclip_requests_total", **key) == 16
    for block in range(1, dep.num_layers + 1):  # the exit histogram: cumulative buckets, le="1.0" ... le="4.0"
        bucket = {"le": f"{block}.0"}
        d = _get(after, "ovclip_exit_block_bucket", **bucket) - _get(before, "ovclip_exit_block_bucket", **bucket)
        assert d == sum(b <= block for b in blocks), block
    batches = _get(after, "ovclip_batch_images_count") - _get(before, "ovclip_batch_images_count")
    assert 1 <= batches < 16  # some requests shared an inference call
    errors = {"endpoint": "/v1/classify", "kind": "empty_labels"}
    assert _get(after, "ovclip_errors_total", **errors) - _get(before, "ovclip_errors_total", **errors) == 1
    for stage in ("read", "decode", "queue", "inference", "respond"):
        assert _get(after, "ovclip_stage_duration_seconds_count", stage=stage) > 0


def test_a_replica_killed_under_load_is_replaced(client, dep, pngs, pixels):
    import ray
    from ray import serve

    victim = client.get("/health").json()
    codes: list[tuple[float, int]] = []  # (time, status) of the load's requests; -1: connection error
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                status = client.post("/v1/embed/image", files=_files(pngs[:2]), timeout=30).status_code
            except httpx.HTTPError:
                status = -1
            codes.append((time.monotonic(), status))

    workers = [threading.Thread(target=load) for _ in range(3)]
    for w in workers:
        w.start()
    time.sleep(1.0)
    killed_at = time.monotonic()
    ray.kill(ray.get_actor(victim["actor"], namespace="serve"), no_restart=True)
    deadline = killed_at + 90
    seen: set[str] = set()
    while True:  # until Serve runs 2 replicas again and both answer, neither of them the killed one
        replicas = serve.status().applications["ovclip"].deployments["OvclipServer"].replica_states
        try:
            r = client.get("/health")
            if r.status_code == 200:
                seen.add(r.json()["replica"])
        except httpx.HTTPError:  # a request routed to the killed replica just before it was marked down
            pass
        if replicas.get("RUNNING") == 2 and len(seen - {victim["replica"]}) == 2:
            break
        assert time.monotonic() < deadline, f"not replaced: {replicas}, seen {seen}"
        time.sleep(0.5)
    recovered_at = time.monotonic()
    stop.set()
    for w in workers:
        w.join(60)
    with pytest.raises(ValueError):  # the killed actor is gone, not restarted under its name
        ray.get_actor(victim["actor"], namespace="serve")
    during = [s for t, s in codes if killed_at < t < recovered_at]
    assert 200 in during, codes  # the other replica kept answering while the new one started
    assert {s for _, s in codes} <= {200, 500, 502, 503, -1}, codes
    ref = dep.run_vision(pixels[:2])
    for _ in range(10):  # and now every request succeeds, with the right embeddings
        r = client.post("/v1/embed/image", files=_files(pngs[:2]))
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.array(r.json()["embeddings"]), ref.embeddings, atol=1e-5)
