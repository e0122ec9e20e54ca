"""Reading checkpoint files safely, and mapping official / diffusers state-dict keys onto the network.

Files from the internet are data, not code. Network checkpoints (`.pt`) are read with
`torch.load(weights_only=True)` plus a short allow-list of the harmless types official files hold; the T5
embedding pickle is read by an unpickler that admits only tensors, numpy arrays, numbers, strings and
containers. Anything else is refused with a `ValueError` before any of it runs.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping

import torch

from ..errors import CorruptFileError

NET_PREFIX = "net."

# Types beyond torch's weights-only defaults that official network checkpoints hold: TransformerEngine
# stores its `_extra_state` (FP8 metadata) as an `io.BytesIO`.
_NETWORK_SAFE_GLOBALS: list = [io.BytesIO]


def refusal(path: str | os.PathLike, err: Exception) -> ValueError:
    # torch's message suggests weights_only=False; keep only the line that names the refused global.
    lines = [ln for ln in str(err).splitlines() if "GLOBAL" in ln or "not allowed" in ln]
    detail = lines[0].strip() if lines else str(err).strip().splitlines()[0]
    return ValueError(
        f"{os.fspath(path)}: refusing to load: the file needs Python objects outside the allow-list of tensors, "
        f"numbers, strings, containers (and io.BytesIO for TransformerEngine state), which could run code. "
        f"Details: {detail}")


def is_refusal(err: Exception) -> bool:
    """An unpickler refusing a global (the file is well-formed but would run code), not a damaged file."""
    return isinstance(err, pickle.UnpicklingError) and "global" in str(err).lower()


def corrupt_file(path: str | os.PathLike, what: str, err: BaseException | None = None) -> CorruptFileError:
    """The one-line error for a file that cannot be read as `what` (truncated, garbage, wrong format)."""
    detail = ""
    if err is not None:
        first = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), "")
        detail = f" ({type(err).__name__}{': ' + first[:160] if first else ''})"
    return CorruptFileError(f"{os.fspath(path)}: corrupt or not a {what}{detail}")


def load_network_checkpoint(path: str | os.PathLike, *, map_location: str | torch.device = "cpu",
                            mmap: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of an official network checkpoint (`torch.save` of a state dict with `net.` keys).

    Non-tensor `*._extra_state` entries (TransformerEngine FP8 metadata) are dropped; a checkpoint wrapped as
    `{"model": state_dict}` or `{"state_dict": state_dict}` is unwrapped. Keys are returned as stored. With `mmap`
    the tensors map the file instead of being read (shapes can be checked without reading 4 GB). A damaged file
    raises `CorruptFileError`; one that needs code to unpickle, `ValueError("... refusing to load ...")`.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"network checkpoint not found: {os.fspath(path)}")
    mmap = mmap and zipfile.is_zipfile(path)  # only the zip format maps; legacy files are read
    try:
        with torch.serialization.safe_globals(_NETWORK_SAFE_GLOBALS):
            obj = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises RuntimeError, KeyError, EOFError... for a damaged file
        if is_refusal(err):
            raise refusal(path, err) from None
        raise corrupt_file(path, "PyTorch checkpoint", err) from None
    if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for wrapper in ("model", "state_dict"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{os.fspath(path)}: expected a state dict (a mapping of names to tensors), "
                         f"got {type(obj).__name__}")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise ValueError(f"{os.fspath(path)}: state-dict key {key!r} is not a string")
        if isinstance(value, torch.Tensor):
            out[key] = value
        elif not key.endswith("_extra_state"):
            raise ValueError(f"{os.fspath(path)}: entry {key!r} is a {type(value).__name__}, not a tensor")
    return out


def save_network_checkpoint(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write a state dict in the official format: one `torch.save`d dict with `net.`-prefixed keys."""
    out = collections.OrderedDict()
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"save_network_checkpoint: {key!r} is a {type(value).__name__}, not a tensor")
        name = key if key.startswith(NET_PREFIX) else NET_PREFIX + key
        out[name] = value.detach().cpu().contiguous()
    torch.save(out, path)


# -- T5 embeddings pickle -------------------------------------------------------------------------------------

def _load_storage_from_bytes(data: bytes):
    """Plain pickles store each tensor's storage as a nested `torch.save` blob: read it weights-only too."""
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


_PICKLE_ALLOWED: dict[tuple[str, str], object] = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "bytearray"): bytearray,
    ("_codecs", "encode"): None,  # filled below: bytes in protocol-2 pickles
}
for _dtype_name in ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool"):
    _PICKLE_ALLOWED[("torch", _dtype_name)] = getattr(torch, _dtype_name)


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
    if encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode(encoding)


_PICKLE_ALLOWED[("_codecs", "encode")] = _codecs_encode


def _numpy_allowed() -> dict[tuple[str, str], object]:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy ships with torch's usual installs
        return {}
    allowed: dict[tuple[str, str], object] = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = _numpy_reconstruct
        allowed[(module, "scalar")] = _numpy_scalar
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    return allowed


def _numpy_reconstruct(subtype, shape, dtype):
    import numpy as np

    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"numpy array subclass {subtype!r} is not allowed")
    return np.ndarray.__new__(subtype, shape, dtype)


def _numpy_scalar(dtype, data=None):
    import numpy as np

    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("numpy object scalars are not allowed")
    return np.frombuffer(data, dtype=dtype, count=1)[0] if data is not None else dtype.type()


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits tensors, numpy arrays, numbers, strings and containers; refuses every other global."""

    _allowed = {**_PICKLE_ALLOWED, **_numpy_allowed()}

    def find_class(self, module: str, name: str):
        value = self._allowed.get((module, name))
        if value is None:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")
        return value

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed")


def restricted_pickle_load(path: str | os.PathLike):
    """Unpickle a file admitting only tensors, numpy arrays, numbers, strings and containers."""
    with open(path, "rb") as f:
        try:
            return _RestrictedUnpickler(f).load()
        except Exception as err:  # a damaged pickle raises EOFError, KeyError, UnpicklingError...
            if is_refusal(err) or "persistent ids" in str(err):
                raise refusal(path, err) from None
            raise corrupt_file(path, "pickle of tensors", err) from None


def load_t5_embeddings(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The precomputed T5 embeddings pickle of an official checkpoint: {instruction: tensor (1, 512, 1024)}.

    Numpy arrays are converted to tensors; the dtype is kept as stored.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"T5 embeddings file not found: {os.fspath(path)}")
    obj = restricted_pickle_load(path)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{os.fspath(path)}: expected a dict of instruction -> embedding, got {type(obj).__name__}")
    out: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise ValueError(f"{os.fspath(path)}: key {key!r} is not a string")
        if not isinstance(value, torch.Tensor):
            try:
                import numpy as np

                is_array = isinstance(value, np.ndarray)
            except ImportError:  # pragma: no cover
                is_array = False
            if not is_array:
                raise ValueError(f"{os.fspath(path)}: the embedding of {key!r} is a {type(value).__name__}, "
                                 "not a tensor or array")
            value = torch.from_numpy(value)
        out[key] = value
    return out


# -- state-dict keys --------------------------------------------------------------------------------------------

_IGNORED_OFFICIAL = re.compile(
    r"^(accum_[a-z_]+|pos_embedder\.(seq|dim_spatial_range|dim_temporal_range)|.*\._extra_state|_extra_state)$")

# Official -> diffusers `CosmosTransformer3DModel` renames (the Cosmos 2.0 table), applied in order.
_TO_DIFFUSERS = (
    ("t_embedder.1", "time_embed.t_embedder"),
    ("t_embedding_norm", "time_embed.norm"),
    ("blocks", "transformer_blocks"),
    ("adaln_modulation_self_attn.1", "norm1.linear_1"),
    ("adaln_modulation_self_attn.2", "norm1.linear_2"),
    ("adaln_modulation_cross_attn.1", "norm2.linear_1"),
    ("adaln_modulation_cross_attn.2", "norm2.linear_2"),
    ("adaln_modulation_mlp.1", "norm3.linear_1"),
    ("adaln_modulation_mlp.2", "norm3.linear_2"),
    ("self_attn", "attn1"),
    ("cross_attn", "attn2"),
    ("q_proj", "to_q"),
    ("k_proj", "to_k"),
    ("v_proj", "to_v"),
    ("output_proj", "to_out.0"),
    ("q_norm", "norm_q"),
    ("k_norm", "norm_k"),
    ("mlp.layer1", "ff.net.0.proj"),
    ("mlp.layer2", "ff.net.2"),
    ("x_embedder.proj.1", "patch_embed.proj"),
    ("final_layer.adaln_modulation.1", "norm_out.linear_1"),
    ("final_layer.adaln_modulation.2", "norm_out.linear_2"),
    ("final_layer.linear", "proj_out"),
)
_DIFFUSERS_ROOTS = ("transformer_blocks.", "time_embed.", "patch_embed.", "norm_out.", "proj_out.")


def official_to_diffusers_key(key: str) -> str:
    for old, new in _TO_DIFFUSERS:
        key = key.replace(old, new)
    return key


def is_ignored_official_key(key: str) -> bool:
    """Entries of official checkpoints that carry no weights: training counters, RoPE buffers, TE state."""
    return bool(_IGNORED_OFFICIAL.match(key))


def to_network_keys(state_dict: Mapping[str, torch.Tensor], network_keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """Map official keys (with or without `net.`) or diffusers keys onto `network_keys`, and check them.

    Drops only the known extras (`accum_*`, the `pos_embedder` buffers, `*._extra_state`); raises `ValueError`
    with the counts and the first few missing and unexpected keys otherwise.
    """
    network_keys = list(network_keys)
    mapped = _map_keys(state_dict, network_keys)
    expected = set(network_keys)
    unexpected = sorted(k for k in mapped if k not in expected)
    missing = [k for k in network_keys if k not in mapped]
    if missing or unexpected:
        raise ValueError("state dict does not match the network: " + mismatch_summary(missing, unexpected))
    return mapped


def _map_keys(state_dict: Mapping[str, torch.Tensor], network_keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """Official (`net.` optional) or diffusers names -> network names, dropping the known extras."""
    from_diffusers = {official_to_diffusers_key(k): k for k in network_keys}
    is_diffusers = any(k.startswith(_DIFFUSERS_ROOTS) for k in state_dict)
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        name = key[len(NET_PREFIX):] if key.startswith(NET_PREFIX) else key
        if is_ignored_official_key(name):
            continue
        if is_diffusers and name in from_diffusers:
            name = from_diffusers[name]
        if name in mapped:
            raise ValueError(f"state dict: key {key!r} maps to {name!r}, which is already given by another key")
        mapped[name] = value
    return mapped


def _first(items: list, limit: int) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return f"{items[:limit]}{more}"


def mismatch_summary(missing: list[str], unexpected: list[str], mismatched: list[str] = (), limit: int = 3) -> str:
    """Counts and the first few keys of each kind: a checkpoint of the wrong size would list thousands."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {_first(missing, limit)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {_first(unexpected, limit)}")
    if mismatched:
        parts.append(f"{len(mismatched)} keys of the wrong shape: {', '.join(mismatched[:limit])}"
                     + (f" and {len(mismatched) - limit} more" if len(mismatched) > limit else ""))
    return "; ".join(parts)


def check_fits(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map `state_dict` onto the keys of `expected` (e.g. a network built on the meta device) and compare shapes.

    Raises one `ValueError` summarising every missing, unexpected and wrongly shaped key; returns the mapped dict."""
    missing: list[str] = []
    unexpected: list[str] = []
    try:
        mapped = to_network_keys(state_dict, expected.keys())
    except ValueError:
        mapped = _map_keys(state_dict, expected.keys())
        missing = [k for k in expected if k not in mapped]
        unexpected = sorted(k for k in mapped if k not in expected)
    mismatched = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})" for k, v in mapped.items()
                  if k in expected and isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(expected[k].shape)]
    if missing or unexpected or mismatched:
        raise ValueError("state dict does not fit the network: " + mismatch_summary(missing, unexpected, mismatched))
    return mapped
