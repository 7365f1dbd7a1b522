"""The KServe v2 inference protocol (the one OpenVINO Model Server and Triton speak), framework-free.

Tensors come as JSON `data` or in the binary tensor data extension: the body starts with a JSON header of
`Inference-Header-Content-Length` bytes, followed by each binary input's raw bytes (little-endian, row-major)
in the order of the inputs that declare `parameters.binary_data_size`. Outputs are returned the same way when
the request asks (`outputs[i].parameters.binary_data` or `parameters.binary_data_output`), which is what
`tritonclient.http` does by default.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from ovclip.serve.errors import RequestError, bad_request

HEADER = "inference-header-content-length"
DTYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 where any size goes

    def to_dict(self) -> dict:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    version: str = "1"

    def metadata(self) -> dict:
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": "openvino",
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: list[str] | None  # None: every output
    binary: dict[str, bool]  # per requested output: reply in binary


def _header(body: bytes, header_length: int | None) -> tuple[dict, bytes]:
    if header_length is None:
        head, rest = body, b""
    else:
        if header_length < 0 or header_length > len(body):
            raise bad_request(f"Inference-Header-Content-Length {header_length} does not fit a {len(body)}-byte body")
        head, rest = body[:header_length], body[header_length:]
    try:
        obj = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad_request(f"malformed JSON in the inference request ({e})", kind="bad_json") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("inputs"), list):
        raise bad_request('an inference request is a JSON object with an "inputs" list', kind="bad_json")
    return obj, rest


def _tensor(t: Any, spec: TensorSpec, binary: bytes, offset: int) -> tuple[np.ndarray, int]:
    """One input tensor, checked against the model's spec; returns it and the new binary offset."""
    shape, datatype = t.get("shape"), t.get("datatype")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise bad_request(f"input {spec.name!r}: shape must be a list of non-negative integers")
    if datatype != spec.datatype:
        raise bad_request(f"input {spec.name!r}: datatype {datatype!r}, the model takes {spec.datatype}")
    if len(shape) != len(spec.shape) or any(s not in (-1, d) for s, d in zip(spec.shape, shape, strict=True)):
        raise bad_request(f"input {spec.name!r}: shape {shape} does not fit the model's {list(spec.shape)}")
    dtype = np.dtype(DTYPES[datatype]).newbyteorder("<")
    count = int(np.prod(shape))
    size = (t.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if size != count * dtype.itemsize or offset + size > len(binary):
            raise bad_request(f"input {spec.name!r}: binary_data_size {size} does not match shape {shape}")
        arr = np.frombuffer(binary, dtype, count, offset).reshape(shape)
        return arr.astype(dtype.newbyteorder("="), copy=True), offset + size
    if "data" not in t:
        raise bad_request(f"input {spec.name!r}: no data (neither JSON data nor binary_data_size)")
    try:
        arr = np.asarray(t["data"], dtype=DTYPES[datatype])
    except (TypeError, ValueError) as e:
        raise bad_request(f"input {spec.name!r}: data is not {datatype} ({e})") from None
    if arr.size != count:
        raise bad_request(f"input {spec.name!r}: {arr.size} values for shape {shape}")
    return arr.reshape(shape), offset


def parse_infer(body: bytes, header_length: int | None, model: ModelSpec) -> InferRequest:
    """Decode and check a v2 infer request for `model`."""
    obj, binary = _header(body, header_length)
    specs = {s.name: s for s in model.inputs}
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for t in obj["inputs"]:
        name = t.get("name") if isinstance(t, dict) else None
        if name not in specs:
            raise bad_request(f"model {model.name!r} has no input {name!r}; its inputs: {', '.join(specs)}")
        inputs[name], offset = _tensor(t, specs[name], binary, offset)
    missing = [n for n in specs if n not in inputs]
    if missing:
        raise bad_request(f"model {model.name!r}: input {missing[0]!r} is missing")
    default_binary = bool((obj.get("parameters") or {}).get("binary_data_output", False))
    known = {s.name for s in model.outputs}
    outputs, binary_out = None, {}
    if obj.get("outputs") is not None:
        outputs = []
        for o in obj["outputs"]:
            name = o.get("name") if isinstance(o, dict) else None
            if name not in known:
                raise bad_request(f"model {model.name!r} has no output {name!r}; its outputs: {', '.join(known)}")
            outputs.append(name)
            binary_out[name] = bool((o.get("parameters") or {}).get("binary_data", default_binary))
    for name in known:
        binary_out.setdefault(name, default_binary)
    return InferRequest(obj.get("id"), inputs, outputs, binary_out)


def infer_response(model: ModelSpec, request: InferRequest, values: dict[str, np.ndarray]) -> tuple[bytes, dict]:
    """(body, headers) of the reply: JSON, or JSON + binary tensors when any output is asked in binary."""
    names = request.outputs if request.outputs is not None else [s.name for s in model.outputs]
    specs = {s.name: s for s in model.outputs}
    outs, chunks = [], []
    for name in names:
        arr = np.ascontiguousarray(values[name], dtype=DTYPES[specs[name].datatype])
        entry: dict[str, Any] = {"name": name, "datatype": specs[name].datatype, "shape": list(arr.shape)}
        if request.binary.get(name):
            raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = arr.reshape(-1).tolist()
        outs.append(entry)
    head = {"model_name": model.name, "model_version": model.version, "outputs": outs}
    if request.id is not None:
        head["id"] = request.id
    text = json.dumps(head).encode()
    if not chunks:
        return text, {"content-type": "application/json"}
    headers = {"content-type": "application/octet-stream", HEADER: str(len(text))}
    return text + b"".join(chunks), headers


def unknown_model(name: str, known: list[str]) -> RequestError:
    return RequestError(404, "unknown_model", f"unknown model {name!r}; this server has: {', '.join(known)}")
