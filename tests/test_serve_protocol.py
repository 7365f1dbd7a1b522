"""The server's request handling without Ray: the KServe v2 codec against tritonclient's own encoder and decoder,
image decoding limits, the /v1 option parsing, metric merging across replicas, the missing-extra message."""

from __future__ import annotations

import io
import sys

import numpy as np
import pytest
from PIL import Image

from ovclip.errors import OvclipError
from ovclip.serve import Limits
from ovclip.serve.decode import decode_image
from ovclip.serve.errors import RequestError
from ovclip.serve.kserve import ModelSpec, TensorSpec, infer_response, parse_infer
from ovclip.serve.metrics import ReplicaMetrics, merge, render
from ovclip.serve.protocol import classify_options, images_from_json, parse_json

triton = pytest.importorskip("tritonclient.http")

MODEL = ModelSpec(
    "m",
    (TensorSpec("pixel_values", "FP32", (-1, 3, 4, 4)), TensorSpec("ids", "INT64", (-1, 5))),
    (TensorSpec("out", "FP32", (-1, 2)), TensorSpec("layer", "INT32", (-1,))),
)


@pytest.mark.parametrize("binary", [True, False])
def test_v2_request_and_response_round_trip_through_tritonclient(binary):
    rng = np.random.default_rng(0)
    px, ids = rng.standard_normal((3, 3, 4, 4)).astype(np.float32), rng.integers(0, 9, (3, 5))
    inputs = [triton.InferInput("pixel_values", list(px.shape), "FP32"), triton.InferInput("ids", [3, 5], "INT64")]
    inputs[0].set_data_from_numpy(px, binary_data=binary)
    inputs[1].set_data_from_numpy(ids, binary_data=binary)
    outputs = [triton.InferRequestedOutput("layer", binary_data=binary)]
    body, header = triton.InferenceServerClient.generate_request_body(inputs, outputs, request_id="r7")
    req = parse_infer(body, header, MODEL)
    np.testing.assert_array_equal(req.inputs["pixel_values"], px)
    np.testing.assert_array_equal(req.inputs["ids"], ids)
    assert req.outputs == ["layer"] and req.id == "r7"
    values = {"out": px[:, 0, 0, :2], "layer": np.array([1, 4, 2], np.int32)}
    payload, headers = infer_response(MODEL, req, values)
    length = headers.get("inference-header-content-length")
    result = triton.InferResult.from_response_body(payload, header_length=None if length is None else int(length))
    np.testing.assert_array_equal(result.as_numpy("layer"), [1, 4, 2])
    assert result.as_numpy("out") is None  # not asked for
    assert result.get_response()["id"] == "r7"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"datatype": "FP64"}, "datatype 'FP64', the model takes FP32"),
        ({"shape": [1, 3, 4, 5]}, "does not fit the model's [-1, 3, 4, 4]"),
        ({"data": [0.0] * 7}, "7 values for shape [1, 3, 4, 4]"),
        ({"name": "pixels"}, "has no input 'pixels'"),
    ],
)
def test_v2_request_errors_name_the_input_and_the_fault(change, message):
    import json

    t = {"name": "pixel_values", "shape": [1, 3, 4, 4], "datatype": "FP32", "data": [0.0] * 48, **change}
    ids = {"name": "ids", "shape": [1, 5], "datatype": "INT64", "data": [1] * 5}
    with pytest.raises(RequestError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        parse_infer(json.dumps({"inputs": [t, ids]}).encode(), None, MODEL)
    assert e.value.status == 400


def _png(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, 128).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_limits_and_faults():
    png = _png((40, 30))
    img = decode_image(png, "file[0]", Limits())
    assert img.mode == "L" and img.size == (40, 30)  # plain grayscale stays one band
    cases = [
        (b"", Limits(), 400, "empty"),
        (b"GIF89a not really", Limits(), 415, "not an image in a supported format"),
        (b"hello", Limits(), 415, "not an image"),
        (png[: len(png) // 2], Limits(), 400, "truncated or corrupt"),
        (png, Limits(max_image_bytes=len(png) - 1), 413, f"{len(png):,} bytes is over"),
        (png, Limits(max_image_pixels=1000), 413, "40x30 = 1,200 pixels is over"),
    ]
    for data, limits, status, message in cases:
        with pytest.raises(RequestError, match=message) as e:
            decode_image(data, "file[0]", limits)
        assert e.value.status == status and str(e.value).startswith("file[0]: ")


def test_v1_fields_are_parsed_or_refused_in_one_line():
    assert classify_options({"labels": "cat, dog ,bird"}, Limits()).labels == ["cat", "dog", "bird"]
    assert classify_options({"labels": '["a, b", "c"]', "top_k": "2"}, Limits()).labels == ["a, b", "c"]
    assert classify_options({"label_set": "x", "top_k": 2}, Limits()).top_k == 2
    refused = [
        ({"labels": []}, '"labels" is empty'),
        ({"labels": "a,,b", "label_set": "x"}, "not both"),
        ({"labels": ["a", " "]}, "holds an empty label"),
        ({}, "no labels"),
        ({"labels": ["a"], "top_k": 0}, '"top_k" must be a positive integer'),
        ({"labels": ["a"], "templates": ["no placeholder"]}, "without {} where the label goes"),
        ({"labels": ["a"] * 3}, "3 labels is over"),
    ]
    for fields, message in refused:
        with pytest.raises(RequestError, match=message.replace("{}", r"\{\}")):
            classify_options(fields, Limits(max_labels=2))
    with pytest.raises(RequestError, match="malformed JSON body"):
        parse_json(b'{"images": [')
    with pytest.raises(RequestError, match=r"images\[1\]: not valid base64"):
        images_from_json({"images": ["aGk=", "!!"]}, Limits())
    with pytest.raises(RequestError, match="3 images in one request is over the server's limit of 2"):
        images_from_json({"images": ["aGk="] * 3}, Limits(max_images=2))


def test_metrics_of_two_replicas_add_up():
    from prometheus_client.parser import text_string_to_metric_families

    a, b = ReplicaMetrics(4), ReplicaMetrics(4)
    a.requests.labels("/v1/classify", "200").inc(3)
    b.requests.labels("/v1/classify", "200").inc(2)
    b.requests.labels("/v1/classify", "400").inc()
    for block in (1, 4, 4):
        a.exits.observe(block)
    b.exits.observe(2)
    text = render(merge([a.snapshot(), b.snapshot()]), 2).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }
    assert samples[("ovclip_requests_total", (("code", "200"), ("endpoint", "/v1/classify")))] == 5
    assert samples[("ovclip_requests_total", (("code", "400"), ("endpoint", "/v1/classify")))] == 1
    buckets = [samples[("ovclip_exit_block_bucket", (("le", f"{k}.0"),))] for k in (1, 2, 3, 4)]
    assert buckets == [1, 2, 2, 4] and samples[("ovclip_exit_block_sum", ())] == 11
    assert samples[("ovclip_replicas_reported", ())] == 2


def test_missing_serve_extra_is_one_line_naming_the_install(monkeypatch):
    from ovclip.serve import require_serve

    monkeypatch.setitem(sys.modules, "ray.serve", None)
    with pytest.raises(OvclipError, match=r"pip install 'ovclip\[serve\]'") as e:
        require_serve()
    assert "\n" not in str(e.value)


def test_server_pixels_are_bit_identical_to_the_library_preprocessing(photos, tmp_path):
    """Bytes -> decode_image -> Pixels against file -> load_image -> ovclip.preprocess, on real Fashion-MNIST
    PNGs (grayscale), the scikit-image photos (RGB, several sizes) and RGBA / palette / 16-bit encodings."""
    from serve_folder import fashion_pngs

    from ovclip.data.images import load_image
    from ovclip.preprocess import PreprocessConfig, preprocess
    from ovclip.serve.pixels import Pixels

    blobs = fashion_pngs(6)
    for photo in photos:
        for mode, fmt in (("RGB", "JPEG"), ("RGBA", "PNG"), ("P", "PNG"), ("I;16", "PNG")):
            img = photo.convert("L").convert("I;16") if mode == "I;16" else photo.convert(mode)
            buf = io.BytesIO()
            img.save(buf, format=fmt)
            blobs.append(buf.getvalue())
    for cfg in (PreprocessConfig(size=64), PreprocessConfig(size=224, shortest_edge=256, resample="bilinear")):
        got = Pixels(cfg)([decode_image(b, f"b{i}", Limits()) for i, b in enumerate(blobs)])
        for i, b in enumerate(blobs):
            (tmp_path / f"{i}.img").write_bytes(b)
            np.testing.assert_array_equal(got[i], preprocess(load_image(tmp_path / f"{i}.img"), cfg), err_msg=str(i))
