"""Open Inference Protocol v2 (KServe v2 / Triton's HTTP protocol) for the same ingress that
serves v1: request parsing with the binary tensor extension, metadata and response building.

A v2 `infer` runs the model's tensor verb (a classifier's or regressor's `predict`, the VAE's
`reconstruct`): one input tensor named "input" of shape [n, *input_shape] (or [n, size]), any
numeric datatype (converted to FP32, checked finite). Outputs: a classifier gives "probabilities"
FP32 [n, classes] and "class" INT64 [n]; a regressor "prediction" FP32 [n]; the VAE
"reconstruction" FP32 [n, *input_shape]. Tensors travel as JSON `data` or, with the binary
extension (`Inference-Header-Content-Length`), as raw little-endian bytes after the JSON header,
as tritonclient sends them by default. Everything a client can get wrong is a RequestError (4xx).

A reply is bounded before the model runs: each output may be asked for once (a repeated or
unknown name is a 400: repeating one was a way to make a small request produce a reply thousands
of times its size), and the reply's size, known from the outputs' shapes, must be within
`max_response_bytes` (413 beyond it, naming binary outputs as the smaller encoding)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from modelfoundry.serving.requests import RequestError, header_int, parse_json_body
from modelfoundry.serving.runner import softmax

HEADER_LENGTH = "inference-header-content-length"
INPUT_NAME = "input"
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
NUMERIC = [t for t in DATATYPES if t != "BOOL"]


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    x: np.ndarray  # float32, (n, *input_shape), finite
    outputs: list[str]  # the output names to return, each once, in the order asked
    binary: set[str]  # outputs to return as binary data
    reply_bytes: int = 0  # the bound on the reply's size (reply_bytes()), set by parse_infer


# the most bytes one value takes in a JSON reply: a float32 as a Python float's repr
# ("-1.2345678901234567e-05") or an int64, plus the ", " between values
JSON_VALUE_BYTES = 25


def output_specs(output: str, input_shape: list[int], config: dict[str, Any]) -> list[dict[str, Any]]:
    """The v2 output tensors of a model whose task answers `output` (tasks.TaskSpec.output)."""
    if output == "classes":
        classes = config.get("output_dim", -1)
        return [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
            {"name": "class", "datatype": "INT64", "shape": [-1]},
        ]
    if output == "values":
        return [{"name": "prediction", "datatype": "FP32", "shape": [-1]}]
    if output == "images":
        return [{"name": "reconstruction", "datatype": "FP32", "shape": [-1, *input_shape]}]
    return []


def metadata(name: str, version: str, output: str, input_shape: list[int], config: dict[str, Any]) -> dict[str, Any]:
    outputs = output_specs(output, input_shape, config)
    return {
        "name": name,
        "versions": [version] if version else [],
        "platform": "pytorch_modelfoundry",
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *input_shape]}] if outputs else [],
        "outputs": outputs,
    }


def _split_body(body: bytes, headers: Any, max_body_bytes: int) -> tuple[dict[str, Any], bytes]:
    n = header_int(headers, HEADER_LENGTH, len(body))  # the JSON header's byte count, at most the body
    if n is None:
        return parse_json_body(body, max_body_bytes), b""
    return parse_json_body(body[:n], max_body_bytes), body[n:]


def _numeric_data(data: Any, count: int, name: str) -> np.ndarray:
    """JSON `data` (flat or nested, row-major) as float64, numbers only."""
    if not isinstance(data, list):
        raise RequestError(400, f"input {name!r}: 'data' must be a list of numbers, got {type(data).__name__}")
    try:
        obj = np.asarray(data, dtype=object).reshape(-1)
        numeric = set(map(type, obj)) <= {int, float}
    except ValueError:
        numeric = False
    if not numeric:
        raise RequestError(400, f"input {name!r}: 'data' must hold numbers only (got ragged or non-numeric values)")
    if obj.size != count:
        raise RequestError(400, f"input {name!r}: 'data' holds {obj.size} values; its shape needs {count}")
    return obj.astype(np.float64)


def _input_tensor(t: dict[str, Any], binary: bytes, input_shape: tuple[int, ...], max_instances: int) -> np.ndarray:
    """The one input tensor (JSON data or the binary bytes after the header) as float32 instances
    of `input_shape`: its name, datatype, shape, size and values checked."""
    name, datatype, shape = t.get("name"), t.get("datatype"), t.get("shape")
    if name != INPUT_NAME:
        raise RequestError(400, f"unknown input {name!r}; this model takes one input named {INPUT_NAME!r}")
    if datatype not in NUMERIC:
        raise RequestError(400, f"input {name!r}: datatype {datatype!r} is not one of {NUMERIC}")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise RequestError(400, f"input {name!r}: 'shape' must be a list of non-negative integers, got {shape!r}")
    n, size = shape[0], math.prod(input_shape)
    if n == 0:
        raise RequestError(400, f"input {name!r} holds no instances; send at least one")
    if n > max_instances:
        raise RequestError(413, f"{n} instances in one request; the limit is {max_instances}")
    if list(shape[1:]) not in (list(input_shape), [size]):
        raise RequestError(
            400, f"input {name!r}: shape {shape} must be [n, {', '.join(map(str, input_shape))}] or [n, {size}]"
        )
    count = n * size
    params = t.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError(400, f"input {name!r}: 'parameters' must be an object")
    if "binary_data_size" in params:
        nbytes = params["binary_data_size"]
        dtype = DATATYPES[datatype]
        if nbytes != count * dtype.itemsize or len(binary) != nbytes:
            raise RequestError(
                400,
                f"input {name!r}: binary_data_size {nbytes!r} with {len(binary)} bytes after the header; "
                f"shape {shape} of {datatype} needs {count * dtype.itemsize}",
            )
        values = np.frombuffer(binary, dtype=dtype).astype(np.float64)
    else:
        if binary:
            raise RequestError(400, "binary data follows the header but no input declares binary_data_size")
        values = _numeric_data(t.get("data"), count, name)
    with np.errstate(over="ignore", invalid="ignore"):
        x = values.astype(np.float32).reshape(n, *input_shape)
    if not np.isfinite(x).all():
        raise RequestError(400, f"input {name!r} holds NaN or infinite values, or numbers beyond float32's range")
    return x


def parse_infer(
    body: bytes,
    headers: Any,
    input_shape: tuple[int, ...],
    max_instances: int,
    max_body_bytes: int,
    specs: list[dict[str, Any]],
    max_response_bytes: int,
) -> InferRequest:
    """A validated infer request for a model whose outputs are `specs` (output_specs), whose reply
    will fit in max_response_bytes."""
    req, binary = _split_body(body, headers, max_body_bytes)
    inputs = req.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise RequestError(400, f"'inputs' must be a list of one tensor named {INPUT_NAME!r}")
    x = _input_tensor(inputs[0], binary, input_shape, max_instances)
    request_id = req.get("id") if isinstance(req.get("id"), str) else None
    if request_id is not None and len(request_id) > MAX_ID_CHARS:
        raise RequestError(400, f"'id' is {len(request_id)} characters; the limit is {MAX_ID_CHARS}")
    outputs, binary = _requested(req, [o["name"] for o in specs])
    request = InferRequest(request_id, x, outputs, binary)
    size = reply_bytes(request, specs)
    request = InferRequest(request_id, x, outputs, binary, size)
    if size > max_response_bytes:
        raise RequestError(
            413,
            f"the reply would be about {size} bytes; the limit is {max_response_bytes}: send fewer instances, "
            "ask for fewer outputs, or ask for binary outputs (parameters.binary_data_output)",
        )
    return request


MAX_ID_CHARS = 256


def _requested(req: dict[str, Any], names: list[str]) -> tuple[list[str], set[str]]:
    outputs = req.get("outputs")
    params = req.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError(400, "'parameters' must be an object")
    binary_all = params.get("binary_data_output") is True
    if outputs is None:
        return list(names), set(names) if binary_all else set()
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise RequestError(400, "'outputs' must be a list of objects with a 'name'")
    wanted = [o["name"] for o in outputs]
    unknown = [o[:64] for o in dict.fromkeys(wanted) if o not in names][:8]
    if unknown:
        raise RequestError(400, f"unknown output(s) {unknown}; this model gives {names}")
    if len(set(wanted)) != len(wanted):
        raise RequestError(400, f"'outputs' names an output more than once; ask for each of {names} at most once")
    binary = {
        o["name"]
        for o in outputs
        if binary_all or (isinstance(o.get("parameters"), dict) and o["parameters"].get("binary_data") is True)
    }
    return wanted, binary


def reply_bytes(request: InferRequest, specs: list[dict[str, Any]]) -> int:
    """An upper bound on the reply's size, from the outputs' shapes (before the model runs)."""
    n = len(request.x)
    by_name = {o["name"]: o for o in specs}
    total = 512  # the JSON header's fixed part
    for name in request.outputs:
        spec = by_name[name]
        values = n * math.prod(max(d, 1) for d in spec["shape"][1:])
        itemsize = DATATYPES[spec["datatype"]].itemsize
        total += 128 + len(name) + values * (itemsize if name in request.binary else JSON_VALUE_BYTES)
    return total


def tensors(kind: str, output: np.ndarray) -> dict[str, np.ndarray]:
    """The model's raw output as the named v2 output tensors of what its task answers (`kind`)."""
    if kind == "classes":
        probs = softmax(output).astype(np.float32)
        return {"probabilities": probs, "class": probs.argmax(axis=1).astype(np.int64)}
    if kind == "values":
        return {"prediction": output.reshape(len(output), -1)[:, 0].astype(np.float32)}
    return {"reconstruction": output.astype(np.float32)}


def response(
    name: str, version: str, request: InferRequest, outs: dict[str, np.ndarray]
) -> tuple[bytes, dict[str, str]]:
    """The response body and its extra headers (binary outputs follow the JSON header). CPU work
    proportional to the reply: the ingress runs a large one off its event loop."""
    entries, chunks = [], []
    for o in request.outputs:
        arr = outs[o]
        datatype = "INT64" if arr.dtype == np.int64 else "FP32"
        entry: dict[str, Any] = {"name": o, "datatype": datatype, "shape": list(arr.shape)}
        if o in request.binary:
            raw = np.ascontiguousarray(arr, dtype=DATATYPES[datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
            entries.append(json.dumps(entry).encode())
        else:  # the values by orjson straight from the array: float32's shortest repr, ~15x json's speed
            data = orjson.dumps(np.ascontiguousarray(arr.reshape(-1)), option=orjson.OPT_SERIALIZE_NUMPY)
            entries.append(json.dumps(entry)[:-1].encode() + b', "data": ' + data + b"}")
    head: dict[str, Any] = {"model_name": name, "model_version": version}
    if request.id is not None:
        head["id"] = request.id
    header = json.dumps(head)[:-1].encode() + b', "outputs": [' + b", ".join(entries) + b"]}"
    if not chunks:
        return header, {"content-type": "application/json"}
    return header + b"".join(chunks), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }
