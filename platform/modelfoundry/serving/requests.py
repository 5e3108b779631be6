"""Request validation for the KServe v1 / TF-Serving REST convention.

Everything a client can get wrong becomes a RequestError carrying an HTTP 4xx status and a
message that names the problem; the ingress turns it into `{"error": ...}`. Nothing here lets bad
input reach a model (no NaN, no wrong shape, no unbounded batch)."""

from __future__ import annotations

import io
import json
import math
import re
from typing import Any

import numpy as np


class RequestError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


MAX_INT_DIGITS = 40  # any integer a model input or a verb's option can use; 10**400 cannot be a float32
MAX_IMAGE_PIXELS = 4_000_000  # width x height checked from the PNG header, before decoding
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise RequestError(400, f"request body holds an integer of {len(text)} digits; numbers must fit a float32")
    return int(text)


def _constant(name: str) -> float:
    raise RequestError(400, f"request body is not valid JSON: {name} is not a JSON number")


DIGITS_RE = re.compile(r"^[0-9]{1,18}$")  # ASCII only: str.isdigit() accepts '²' and other scripts' digits


def header_int(headers: Any, name: str, high: int) -> int | None:
    """A header holding a count: None when absent, else a plain decimal from 0 to `high` (else 400:
    never int() on a client's text, which raises on '²' or on 5,000 digits)."""
    raw = headers.get(name)
    if raw is None:
        return None
    text = raw.strip()
    if not DIGITS_RE.match(text) or int(text) > high:
        raise RequestError(400, f"header {name.title()} is {raw[:40]!r}; it must be a whole number from 0 to {high}")
    return int(text)


async def read_body(request: Any, max_body_bytes: int) -> bytes:
    """The request body, read chunk by chunk and refused with 413 as soon as it passes the limit
    (a chunked upload declares no Content-Length; one that lies about it is caught too)."""
    declared = request.headers.get("content-length")
    if declared and DIGITS_RE.match(declared) and int(declared) > max_body_bytes:
        raise RequestError(413, f"request body is {declared} bytes; the limit is {max_body_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body_bytes:
            raise RequestError(413, f"request body is over {max_body_bytes} bytes; the limit is {max_body_bytes}")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json_body(body: bytes, max_body_bytes: int) -> dict[str, Any]:
    if len(body) > max_body_bytes:
        raise RequestError(413, f"request body is {len(body)} bytes; the limit is {max_body_bytes}")
    try:
        data = json.loads(body, parse_int=_int, parse_constant=_constant)
    except RecursionError:  # json's C parser counts its depth against the recursion limit
        raise RequestError(400, "request body nests arrays/objects too deeply") from None
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
        raise RequestError(400, f"request body is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise RequestError(400, 'request body must be a JSON object such as {"instances": [...]}')
    return data


def instances_array(
    data: dict[str, Any], input_shape: tuple[int, ...], max_instances: int, key: str = "instances"
) -> np.ndarray:
    """The `key` list as a float32 array of shape (n, *input_shape); a flat instance of the right
    length is accepted too."""
    if key not in data:
        raise RequestError(400, f"request body needs {key!r}: a list of inputs, each of shape {list(input_shape)}")
    items = data[key]
    if not isinstance(items, list):
        raise RequestError(400, f"{key!r} must be a list, got {type(items).__name__}")
    if not items:
        raise RequestError(400, f"{key!r} is empty; send at least one input")
    if len(items) > max_instances:
        raise RequestError(413, f"{len(items)} {key} in one request; the limit is {max_instances}")
    try:
        # an object array first: its leaves keep their JSON types, so "1.5", true and null are
        # refused instead of being converted the way float32 conversion would
        obj = np.asarray(items, dtype=object)
        numeric = set(map(type, obj.flat)) <= {int, float}
    except ValueError:  # ragged deeper down
        numeric = False
    if not numeric:
        raise RequestError(
            400,
            f"{key!r} must hold numbers only, each input of shape {list(input_shape)} (got ragged or non-numeric values)",
        )
    # no overflow here: integers are at most MAX_INT_DIGITS long and JSON floats parse to at most inf
    arr = obj.astype(np.float32)
    size = math.prod(input_shape)
    if arr.shape[1:] != tuple(input_shape):
        if arr.ndim >= 2 and math.prod(arr.shape[1:]) == size and arr.ndim == 2:
            arr = arr.reshape(len(arr), *input_shape)
        else:
            raise RequestError(
                400,
                f"each input must have shape {list(input_shape)} (or {size} flat values); got {list(arr.shape[1:])}",
            )
    if not np.isfinite(arr).all():
        raise RequestError(400, f"{key!r} holds NaN or infinite values, or numbers beyond float32's range")
    return arr


def png_array(
    body: bytes, input_shape: tuple[int, ...], max_body_bytes: int, max_pixels: int = MAX_IMAGE_PIXELS
) -> np.ndarray:
    """A PNG upload as one grayscale input in [0, 1], resized to the model's (1, H, W). Only PNG is
    decoded, and only after its header shows at most `max_pixels` pixels: a small file can
    declare an enormous image (a decompression bomb), which is refused with 413 undecoded. CPU
    work: call it off the event loop."""
    if len(body) > max_body_bytes:
        raise RequestError(413, f"request body is {len(body)} bytes; the limit is {max_body_bytes}")
    if len(input_shape) != 3 or input_shape[0] != 1:
        raise RequestError(415, f"this model takes inputs of shape {list(input_shape)}, not images")
    if not body.startswith(PNG_MAGIC):
        raise RequestError(415, "the body is not a PNG image (only PNG is accepted as image/png)")
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(body), formats=["PNG"])  # reads the header only
        w, h = img.size
        if w * h > max_pixels:
            raise RequestError(413, f"the PNG is {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
        img.load()
    except Image.DecompressionBombError as err:
        raise RequestError(413, f"the PNG is too large to decode: {err}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise RequestError(400, "the body is not a readable PNG image") from None
    img = img.convert("L").resize((input_shape[2], input_shape[1]), Image.Resampling.BILINEAR)
    return (np.asarray(img, dtype=np.float32) / 255.0)[None, None]


def png_grid(images: np.ndarray) -> bytes:
    """(n, 1, H, W) values in [0, 1] -> one PNG with the images side by side in a grid."""
    from PIL import Image

    n, _, h, w = images.shape
    cols = min(n, 8)
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * h, cols * w), dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * h : (r + 1) * h, c * w : (c + 1) * w] = np.clip(img[0] * 255, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grid, mode="L").save(buf, format="PNG")
    return buf.getvalue()
