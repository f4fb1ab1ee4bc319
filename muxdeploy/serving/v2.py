"""KServe V2 (Triton HTTP) request/response codec: JSON tensors and Triton's binary tensor extension.

A request is JSON, or JSON followed by raw tensor bytes when the `Inference-Header-Content-Length`
header gives the JSON's length (what tritonclient sends by default). Results go back the same way:
as JSON data, or as binary when the request asks for it (`binary_data_output` or per-output
`binary_data`). numpy only.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from muxdeploy.core.errors import UserInputError

HEADER_LENGTH = "inference-header-content-length"
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
NAMES = {v: k for k, v in DTYPES.items()}


class ProtocolError(UserInputError):
    """A request that is not valid KServe V2 (answered with 400)."""


@dataclass
class InferRequest:
    """A decoded inference request."""

    inputs: dict[str, np.ndarray]
    request_id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] | None = None  # requested output names (None: all)
    binary_outputs: set[str] = field(default_factory=set)
    binary_all: bool = False


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"request body is not valid JSON ({exc})") from None


def _bytes_elements(raw: bytes, count: int) -> np.ndarray:
    """Triton's BYTES binary layout: each element is a 4-byte little-endian length, then the bytes."""
    items, pos = [], 0
    for _ in range(count):
        if pos + 4 > len(raw):
            raise ProtocolError("BYTES tensor data ends early")
        (size,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        items.append(raw[pos : pos + size])
        pos += size
    if pos != len(raw):
        raise ProtocolError("BYTES tensor data has trailing bytes")
    return np.array(items, dtype=object)


def _shape(spec: dict[str, Any], name: str) -> list[int]:
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    return shape


def _decode_input(spec: Any, binary: bytes | None) -> tuple[str, np.ndarray]:
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ProtocolError("every input needs a 'name', 'shape', 'datatype' and 'data'")
    name = spec["name"]
    shape = _shape(spec, name)
    if binary is None and "data" not in spec:
        raise ProtocolError(f"input {name!r} has no 'data'")
    return name, decode_tensor(name, spec.get("datatype"), shape, binary, spec.get("data"))


def decode_tensor(name: str, datatype: Any, shape: list[int], raw: bytes | None, data: Any = None) -> np.ndarray:
    """One V2 input tensor from its raw bytes (binary extension / gRPC raw contents) or its list of values."""
    count = int(np.prod(shape)) if shape else 1
    if datatype != "BYTES" and datatype not in DTYPES:
        raise ProtocolError(f"input {name!r}: unknown datatype {datatype!r}")
    if raw is not None:
        if datatype == "BYTES":
            return _bytes_elements(raw, count).reshape(shape)
        dtype = DTYPES[datatype]
        if len(raw) != count * dtype.itemsize:
            raise ProtocolError(f"input {name!r}: {len(raw)} bytes of data do not fill shape {shape} of {datatype}")
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    if datatype == "BYTES":
        flat = np.array(data, dtype=object).reshape(-1)
        if not all(isinstance(x, str | bytes) for x in flat):
            raise ProtocolError(f"input {name!r}: BYTES data must be strings")
    else:
        try:
            flat = np.asarray(data).reshape(-1)
        except ValueError:
            raise ProtocolError(f"input {name!r}: 'data' is ragged; give a flat list in row-major order") from None
        kind = DTYPES[datatype].kind
        ok = flat.dtype.kind in ("iu" if kind in "iu" else "iuf" if kind == "f" else "b") or flat.size == 0
        if not ok:
            raise ProtocolError(f"input {name!r}: data of {flat.dtype.kind!r} kind does not match datatype {datatype}")
        flat = flat.astype(DTYPES[datatype])
    if flat.size != count:
        raise ProtocolError(f"input {name!r}: {flat.size} values do not fill shape {shape}")
    return flat.reshape(shape)


def decode_request(body: bytes, header_length: str | None) -> InferRequest:
    """Parse a V2 inference request body (JSON, or JSON + binary tensors)."""
    tail = b""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER_LENGTH} {header_length!r} is not an integer") from None
        if not 0 <= n <= len(body):
            raise ProtocolError(f"{HEADER_LENGTH} {n} is outside the body's {len(body)} bytes")
        body, tail = body[:n], body[n:]
    doc = _json(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise ProtocolError("request must be a JSON object with a non-empty 'inputs' list")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("'parameters' must be an object")
    inputs: dict[str, np.ndarray] = {}
    pos = 0
    for spec in doc["inputs"]:
        size = ((spec.get("parameters") or {}) if isinstance(spec, dict) else {}).get("binary_data_size")
        chunk = None
        if size is not None:
            if not isinstance(size, int) or size < 0 or pos + size > len(tail):
                raise ProtocolError("binary_data_size does not match the binary data after the JSON header")
            chunk, pos = tail[pos : pos + size], pos + size
        name, array = _decode_input(spec, chunk)
        if name in inputs:
            raise ProtocolError(f"input {name!r} is given twice")
        inputs[name] = array
    if pos != len(tail):
        raise ProtocolError(f"{len(tail) - pos} bytes of binary data after the JSON header belong to no input")
    req = InferRequest(inputs, doc.get("id"), params, binary_all=bool(params.get("binary_data_output", False)))
    if doc.get("outputs") is not None:
        if not isinstance(doc["outputs"], list):
            raise ProtocolError("'outputs' must be a list")
        req.outputs = []
        for out in doc["outputs"]:
            if not isinstance(out, dict) or not isinstance(out.get("name"), str):
                raise ProtocolError("every requested output needs a 'name'")
            req.outputs.append(out["name"])
            if (out.get("parameters") or {}).get("binary_data", req.binary_all):
                req.binary_outputs.add(out["name"])
    elif req.binary_all:
        req.binary_outputs = {"*"}
    return req


def encode_response(
    model: str, version: str, request_id: str | None, outputs: dict[str, np.ndarray], binary: set[str]
) -> tuple[bytes, dict[str, str]]:
    """(body, extra headers) for a V2 response; outputs named in `binary` (or "*": all) go as raw bytes."""
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": []}
    if request_id is not None:
        doc["id"] = request_id
    blobs: list[bytes] = []
    for name, array in outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": NAMES[array.dtype], "shape": list(array.shape)}
        if name in binary or "*" in binary:
            raw = np.ascontiguousarray(array).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = array.reshape(-1).tolist()
        doc["outputs"].append(entry)
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return head, {}
    return head + b"".join(blobs), {"Inference-Header-Content-Length": str(len(head))}
