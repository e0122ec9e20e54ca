"""The codecs: openpi's msgpack arrays and json_numpy's JSON arrays, both ways, and what they refuse."""

from __future__ import annotations

import base64
import json
import pickle

import msgpack
import numpy as np
import pytest

from cosmos_policy.serve import wire


def test_msgpack_round_trip_keeps_dtype_shape_and_values():
    obs = {"image": np.arange(24, dtype=np.uint8).reshape(2, 4, 3), "proprio": np.linspace(0, 1, 9),
           "flag": np.bool_(True), "n": np.int32(7), "task_description": "pick"}
    back = wire.unpack(wire.pack(obs))
    assert back["image"].dtype == np.uint8 and back["image"].shape == (2, 4, 3)
    np.testing.assert_array_equal(back["image"], obs["image"])
    np.testing.assert_array_equal(back["proprio"], obs["proprio"])
    assert back["n"] == 7 and back["n"].dtype == np.int32 and back["task_description"] == "pick"
    back["image"][0, 0, 0] = 255  # writable: the policy may write into what it is given


def test_replies_use_binary_keys_as_openpi_does():
    """The stock client looks the array markers up as bytes: str keys would leave the arrays undecoded."""
    raw = msgpack.unpackb(wire.pack({"actions": np.zeros((2, 3), np.float32)}), raw=False)
    assert raw["actions"][b"__ndarray__"] is True and raw["actions"][b"dtype"] == "<f4"


def test_msgpack_accepts_string_marker_keys():
    data = np.ones(3, np.float32)
    message = msgpack.packb({"a": {"__ndarray__": True, "data": data.tobytes(), "dtype": "<f4", "shape": [3]}})
    np.testing.assert_array_equal(wire.unpack(message)["a"], data)


@pytest.mark.parametrize("dtype", ["|O", "V8", "<c8", "[('a', '<f4')]", "not-a-dtype"])
def test_msgpack_refuses_non_numeric_dtypes(dtype):
    message = msgpack.packb({"a": {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": dtype, b"shape": [1]}})
    with pytest.raises(wire.WireError, match="dtype"):
        wire.unpack(message)


def test_msgpack_refuses_a_data_length_that_does_not_match_the_shape():
    message = msgpack.packb({"a": {b"__ndarray__": True, b"data": b"\0" * 7, b"dtype": "<f4", b"shape": [2]}})
    with pytest.raises(wire.WireError, match="needs 8 bytes, got 7"):
        wire.unpack(message)


def test_pickle_is_not_msgpack():
    with pytest.raises(wire.WireError, match="msgpack"):
        wire.unpack(pickle.dumps({"primary_image": np.zeros((2, 2, 3), np.uint8)}))


def test_msgpack_extension_types_are_refused():
    with pytest.raises(wire.WireError, match="extension"):
        wire.unpack(msgpack.packb({"a": msgpack.ExtType(1, b"x")}))


def test_message_size_limit():
    with pytest.raises(wire.WireError, match="over the limit"):
        wire.unpack(wire.pack({"a": np.zeros(100, np.uint8)}), max_bytes=64)


def test_json_numpy_format_both_ways():
    json_numpy = pytest.importorskip("json_numpy")
    obs = {"primary_image": np.arange(12, dtype=np.uint8).reshape(2, 2, 3), "proprio": np.arange(14.0),
           "value": np.float32(0.5)}
    back = wire.loads(json_numpy.dumps(obs))  # what the official client sends
    np.testing.assert_array_equal(back["primary_image"], obs["primary_image"])
    assert back["primary_image"].dtype == np.uint8 and back["value"] == np.float32(0.5)
    theirs = json_numpy.loads(wire.dumps(obs))  # what the official client reads
    np.testing.assert_array_equal(theirs["proprio"], obs["proprio"])


def test_json_refuses_bad_arrays():
    with pytest.raises(wire.WireError, match="base64"):
        wire.loads('{"a": {"__numpy__": "***", "dtype": "<f4", "shape": [1]}}')
    with pytest.raises(wire.WireError, match="dtype"):
        data = base64.b64encode(b"\0" * 8).decode()
        wire.loads(json.dumps({"a": {"__numpy__": data, "dtype": "|O", "shape": [1]}}))
    with pytest.raises(wire.WireError, match="JSON"):
        wire.loads(b"{not json")


def test_observation_keys_must_make_a_dict():
    with pytest.raises(wire.WireError, match="expected a map"):
        wire.observation_keys([1, 2])
    assert wire.observation_keys({b"proprio": 1}) == {"proprio": 1}
