"""The two wire formats of the server, decoded strictly (no pickle, numeric arrays only, sizes checked).

- websocket: msgpack frames with numpy arrays as openpi writes them, ``{"__ndarray__": True, "data": bytes,
  "dtype": "<f4", "shape": [...]}`` and scalars as ``{"__npgeneric__": True, "data", "dtype"}``; openpi packs those
  keys as msgpack binary, so replies use binary keys too (the stock client looks them up as bytes).
- HTTP: JSON with arrays as ``json_numpy`` writes them, ``{"__numpy__": base64, "dtype": "|u1", "shape": [...]}``,
  the format of the official ALOHA deployment client.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any

import msgpack
import numpy as np

NUMERIC_KINDS = "biuf"  # bool, signed / unsigned int, float: nothing that could hold objects
MAX_NDIM = 8


class WireError(ValueError):
    """A message that cannot be decoded; the text says what was wrong, naming the key where there is one."""


def _dtype(text: Any) -> np.dtype:
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if not isinstance(text, str):
        raise WireError(f"array dtype: expected a dtype string such as '<f4', got {type(text).__name__}")
    try:
        dtype = np.dtype(text)
    except (TypeError, ValueError):
        raise WireError(f"array dtype: {text!r} is not a numpy dtype") from None
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise WireError(f"array dtype: {text!r} is not a plain numeric dtype (bool, int, uint or float)")
    return dtype


def _shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > MAX_NDIM:
        raise WireError(f"array shape: expected a list of at most {MAX_NDIM} sizes, got {value!r:.80}")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value):
        raise WireError(f"array shape: expected non-negative whole numbers, got {value!r:.80}")
    return tuple(value)


def _array(data: Any, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(data, (bytes, bytearray)):
        raise WireError(f"array data: expected bytes, got {type(data).__name__}")
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise WireError(f"array data: shape {list(shape)} of {dtype.str} needs {expected} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).copy()  # a writable array that owns its memory


def _get(obj: dict, key: str) -> Any:
    if key in obj:
        return obj[key]
    raw = key.encode()
    if raw in obj:
        return obj[raw]
    raise WireError(f"array: missing {key!r}")


def _msgpack_hook(obj: dict) -> Any:
    if obj.get("__ndarray__") or obj.get(b"__ndarray__"):
        dtype = _dtype(_get(obj, "dtype"))
        return _array(_get(obj, "data"), dtype, _shape(_get(obj, "shape")))
    if obj.get("__npgeneric__") or obj.get(b"__npgeneric__"):
        dtype = _dtype(_get(obj, "dtype"))
        value = _get(obj, "data")
        if not isinstance(value, (bool, int, float)):
            raise WireError(f"numpy scalar: expected a number, got {type(value).__name__}")
        return dtype.type(value)
    return obj


def _no_ext(code: int, data: bytes) -> Any:
    raise WireError(f"msgpack extension type {code} is not accepted")


def unpack(message: bytes, max_bytes: int | None = None) -> Any:
    """A msgpack message (openpi array convention) -> Python objects with numpy arrays."""
    if max_bytes is not None and len(message) > max_bytes:
        raise WireError(f"message of {len(message)} bytes is over the limit of {max_bytes}")
    try:
        return msgpack.unpackb(message, object_hook=_msgpack_hook, ext_hook=_no_ext, raw=False,
                               strict_map_key=False)
    except WireError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as err:  # truncated, extra data, bad utf-8, ...
        raise WireError(f"not a msgpack message ({type(err).__name__}: {err})") from None


def _msgpack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        array = np.ascontiguousarray(obj)
        _dtype(array.dtype.str)
        return {b"__ndarray__": True, b"data": array.tobytes(), b"dtype": array.dtype.str, b"shape": array.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send a {type(obj).__name__}")


def pack(obj: Any) -> bytes:
    """Python objects with numpy arrays -> a msgpack message the openpi client reads."""
    return msgpack.packb(obj, default=_msgpack_default, use_bin_type=True)


def observation_keys(obj: Any) -> dict[str, Any]:
    """A decoded message as an observation dict with string keys."""
    if not isinstance(obj, dict):
        raise WireError(f"expected a map (the observation dict), got {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if isinstance(key, bytes):
            key = key.decode("utf-8", "replace")
        if not isinstance(key, str):
            raise WireError(f"observation keys must be strings, got {key!r:.40}")
        out[key] = value
    return out


# -- JSON (HTTP /act) -----------------------------------------------------------------------------------------------

def _json_hook(obj: dict) -> Any:
    if "__numpy__" not in obj:
        return obj
    dtype = _dtype(obj.get("dtype"))
    shape = _shape(obj.get("shape"))
    data = obj["__numpy__"]
    if not isinstance(data, str):
        raise WireError(f"array data: expected a base64 string, got {type(data).__name__}")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise WireError("array data: not valid base64") from None
    array = _array(raw, dtype, shape)
    return array if shape else array.reshape(())[()]


def loads(text: str | bytes) -> Any:
    """JSON with `json_numpy` arrays -> Python objects with numpy arrays."""
    try:
        return json.loads(text, object_hook=_json_hook)
    except WireError:
        raise
    except (ValueError, TypeError, RecursionError) as err:
        raise WireError(f"not a JSON document ({type(err).__name__}: {err})") from None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)):
        array = np.ascontiguousarray(obj)
        return {"__numpy__": base64.b64encode(array.tobytes()).decode("ascii"), "dtype": array.dtype.str,
                "shape": list(np.shape(obj))}
    raise TypeError(f"cannot send a {type(obj).__name__}")


def dumps(obj: Any) -> str:
    """Python objects with numpy arrays -> JSON that `json_numpy.loads` reads."""
    return json.dumps(obj, default=_json_default)
