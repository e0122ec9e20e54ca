"""The server on loopback with the tiny model: both front ends answer exactly what `policy.infer` gives for the same
observation and seed, follow the seed rule, and survive bad clients."""

from __future__ import annotations

import gc
import pickle
import socket
import threading
import time
import tracemalloc
import urllib.error
import urllib.request

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from cosmos_policy.serve import wire

from .conftest import MAX_MESSAGE, OTHER_TASK


class Client:
    """A minimal openpi-protocol client (the stock one is tested in test_openpi_client.py)."""

    def __init__(self, url: str):
        self.conn = connect(url, max_size=None, compression=None, open_timeout=10)
        self.metadata = wire.unpack(self.conn.recv(10))

    def send(self, obs):
        self.conn.send(obs if isinstance(obs, (bytes, str)) else wire.pack(obs))
        reply = self.conn.recv(60)
        return reply if isinstance(reply, str) else wire.unpack(reply)

    def close(self):
        self.conn.close()


def post(url: str, body: bytes, timeout: float = 60) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def assert_same(reply: dict, reference: dict):
    """Bit-identical when the request ran alone; in a batch, equal up to float rounding of the batched GEMMs."""
    assert reply["actions"].shape == (16, 7) and reply["actions"].dtype == np.float32
    if reply.get("server_timing", {}).get("batch_size", 1) == 1:
        np.testing.assert_array_equal(reply["actions"], reference["actions"])
        assert reply["value"] == reference["value"]
    else:
        np.testing.assert_allclose(reply["actions"], reference["actions"], rtol=1e-4, atol=1e-4)
        assert abs(reply["value"] - reference["value"]) < 1e-4


def test_metadata_and_healthz(server):
    client = Client(server.ws_url)
    meta = client.metadata
    client.close()
    assert meta["suite"] == "libero" and meta["chunk_size"] == 16 and meta["action_dim"] == 7
    assert set(meta["observation"]) == {"wrist_image", "primary_image", "proprio", "task_description"}
    assert meta["observation"]["proprio"]["shape"] == [9] and OTHER_TASK in meta["instructions"]
    for url in (server.ws_url.replace("ws://", "http://"), server.http_url):
        with urllib.request.urlopen(url + "/healthz", timeout=10) as response:
            assert response.status == 200 and response.read() == b"OK\n"
    assert server.warmup_ms is not None  # warm before the first client


def test_websocket_actions_equal_policy_infer_with_seed_plus_k(server, reference_policy, observation):
    client = Client(server.ws_url)
    try:
        replies = [client.send(observation) for _ in range(2)]
        assert [r["seed"] for r in replies] == [195, 196]  # the k-th query of a connection: seed + k
        for reply in replies:
            assert_same(reply, reference_policy.infer(observation, seed=reply["seed"]))
        assert set(replies[0]["server_timing"]) >= {"queue_ms", "infer_ms", "total_ms", "batch_size"}
        assert {"preprocess", "vae_encode", "denoise", "total"} <= set(replies[0]["policy_timing"])
        assert not np.array_equal(replies[0]["actions"], replies[1]["actions"])
        # episode_start restarts the count; with a seed it sets the connection's base seed
        assert client.send({"__ctrl__": "episode_start"}) == {"__ctrl__": "episode_start", "next_seed": 195}
        assert client.send(observation)["seed"] == 195
        assert client.send({"__ctrl__": "episode_start", "seed": 7})["next_seed"] == 7
        again = client.send(observation)
        assert again["seed"] == 7
        assert_same(again, reference_policy.infer(observation, seed=7))
    finally:
        client.close()


def test_each_connection_counts_its_own_queries(server, observation):
    a, b = Client(server.ws_url), Client(server.ws_url)
    try:
        assert a.send(observation)["seed"] == 195
        assert b.send(observation)["seed"] == 195
        assert a.send(observation)["seed"] == 196
    finally:
        a.close()
        b.close()


def test_concurrent_clients_batched_equal_one_at_a_time(server, reference_policy, observation):
    """Four connections at once: the waiting requests may share a batch, every answer is still its own."""
    other = {**observation, "task_description": OTHER_TASK, "proprio": np.asarray(observation["proprio"]) * 0.5}
    observations = [observation, other, other, observation]
    replies: list = [None] * 4
    clients = [Client(server.ws_url) for _ in observations]
    for i, client in enumerate(clients):
        client.send({"__ctrl__": "episode_start", "seed": 1000 + i})

    def go(i):
        replies[i] = clients[i].send(observations[i])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for client in clients:
        client.close()
    assert max(r["server_timing"]["batch_size"] for r in replies) > 1  # some did share a batch
    for i, reply in enumerate(replies):
        assert reply["seed"] == 1000 + i
        assert_same(reply, reference_policy.infer(observations[i], seed=1000 + i))


def test_http_act_as_the_official_client_sends_it(server, reference_policy, observation):
    json_numpy = pytest.importorskip("json_numpy")
    url = server.http_url + "/act"
    status, body = post(url, json_numpy.dumps({**observation, "seed": 42}).encode())
    assert status == 200, body
    reply = json_numpy.loads(body)
    assert reply["seed"] == 42 and reply["future_image_predictions"] is None
    assert reply["value_prediction"] == reply["value"]
    assert_same(reply, reference_policy.infer(observation, seed=42))
    # no seed: the server's counter, seed + n over the /act calls without one
    post(server.http_url + "/reset", b"")
    seeds = [json_numpy.loads(post(url, json_numpy.dumps(observation).encode())[1])["seed"] for _ in range(2)]
    assert seeds == [195, 196]
    # the double-encoded form, and plain nested lists for the images
    listed = {**observation, "primary_image": observation["primary_image"].tolist(), "seed": 42}
    status, body = post(url, json_numpy.dumps({"encoded": json_numpy.dumps(listed)}).encode())
    assert status == 200, body
    assert_same(json_numpy.loads(json_numpy.loads(body)), reply)


def test_http_future_images_when_asked(server, observation):
    json_numpy = pytest.importorskip("json_numpy")
    status, body = post(server.http_url + "/act",
                        json_numpy.dumps({**observation, "seed": 1, "return_future_images": True}).encode())
    assert status == 200, body
    futures = json_numpy.loads(body)["future_image_predictions"]
    assert set(futures) == {"primary_image", "wrist_image"}
    assert all(image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 for image in futures.values())


# -- robustness -------------------------------------------------------------------------------------------------------

def _answers_next_client(server, observation):
    client = Client(server.ws_url)
    try:
        assert client.send(observation)["actions"].shape == (16, 7)
    finally:
        client.close()


@pytest.mark.parametrize("case", ["malformed", "text", "missing_key", "wrong_shape", "pickle", "pickle_array",
                                  "unknown_task", "not_a_dict", "bad_seed_ctrl"])
def test_websocket_bad_request_gets_an_error_and_the_connection_goes_on(server, observation, case):
    bad = {
        "malformed": b"\xc1\xff\x00garbage",
        "text": "hello",
        "missing_key": wire.pack({k: v for k, v in observation.items() if k != "wrist_image"}),
        "wrong_shape": wire.pack({**observation, "primary_image": np.zeros((64, 64), np.uint8)}),
        "pickle": pickle.dumps(observation),
        "pickle_array": wire.pack({**observation, "primary_image": {
            b"__ndarray__": True, b"data": pickle.dumps(object()), b"dtype": "|O", b"shape": [1]}}),
        "unknown_task": wire.pack({**observation, "task_description": "dance"}),
        "not_a_dict": wire.pack([1, 2, 3]),
        "bad_seed_ctrl": wire.pack({"__ctrl__": "episode_start", "seed": -3}),
    }[case]
    expected = {"missing_key": "wrist_image", "wrong_shape": "primary_image", "unknown_task": "task_description",
                "pickle_array": "dtype", "bad_seed_ctrl": "seed", "not_a_dict": "map", "text": "binary"}
    client = Client(server.ws_url)
    try:
        reply = client.send(bad)
        assert isinstance(reply, str) and reply.startswith("error: "), reply
        assert expected.get(case, "msgpack") in reply
        assert client.send(observation)["seed"] == 195  # a failed query does not use up a seed
    finally:
        client.close()
    _answers_next_client(server, observation)


def test_oversized_message_closes_with_1009_and_the_server_goes_on(server, observation):
    client = Client(server.ws_url)
    client.conn.send(b"\0" * (MAX_MESSAGE + 1))
    with pytest.raises(ConnectionClosed) as closed:
        client.conn.recv(10)
    assert closed.value.rcvd.code == 1009  # message too big
    _answers_next_client(server, observation)


def test_disconnect_mid_request(server, observation):
    client = Client(server.ws_url)
    client.conn.send(wire.pack(observation))
    client.conn.close()  # gone before the reply
    deadline = time.monotonic() + 30
    while (server.stats()["running"] or server.stats()["waiting"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    _answers_next_client(server, observation)
    # a raw socket that vanishes in the middle of a frame
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        raw.recv(4096)
        raw.sendall(b"\x82\xfe\x10\x00")  # a binary frame header announcing 4096 bytes, then nothing
    _answers_next_client(server, observation)


@pytest.mark.parametrize("body,status,needle", [
    (b"{not json", 400, "JSON"),
    (b'{"primary_image": 1}', 400, "wrist_image"),
    (pickle.dumps({"a": 1}), 400, "JSON"),
    (b'{"encoded": 3}', 400, "encoded"),
])
def test_http_bad_request(server, observation, body, status, needle):
    code, text = post(server.http_url + "/act", body)
    assert code == status and needle in text.decode(), text
    _answers_next_client(server, observation)


def test_http_wrong_shape_seed_and_oversized(server, observation):
    json_numpy = pytest.importorskip("json_numpy")
    url = server.http_url + "/act"
    code, text = post(url, json_numpy.dumps({**observation, "wrist_image": np.zeros((8, 8, 4), np.uint8)}).encode())
    assert code == 400 and b"wrist_image" in text
    code, text = post(url, json_numpy.dumps({**observation, "seed": -1}).encode())
    assert code == 400 and b"seed" in text
    code, text = post(url, json_numpy.dumps({**observation, "primary_image": [[[300, 0, 0]]]}).encode())
    assert code == 400 and b"primary_image" in text
    # refused from the declared length, before the body is read (so the client may not even send it)
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as raw:
        raw.sendall(f"POST /act HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {MAX_MESSAGE + 1}\r\n\r\n".encode())
        reply = b""
        while b"limit" not in reply and len(reply) < 4096:
            piece = raw.recv(4096)
            if not piece:
                break
            reply += piece
    assert reply.startswith(b"HTTP/1.1 413") and b"over the limit" in reply


def test_http_chunked_body_over_the_limit_in_total_is_refused(server, observation):
    """No Content-Length, every chunk well under the limit, 1.5 limits in all: refused on the running total."""
    chunk, count = MAX_MESSAGE // 8, 12
    head = (b"POST /act HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    reply = b""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as raw:
        def send_body():  # beside the reading: the server may answer and close before the body ends
            try:
                raw.sendall(head)
                for _ in range(count):
                    raw.sendall(b"%x\r\n" % chunk + b" " * chunk + b"\r\n")
                raw.sendall(b"2\r\n{}\r\n0\r\n\r\n")
            except OSError:
                pass

        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        try:
            while b"limit" not in reply and len(reply) < 4096:
                piece = raw.recv(4096)
                if not piece:
                    break
                reply += piece
        except OSError:
            pass
        sender.join(10)
    assert reply.startswith(b"HTTP/1.1 413") and b"over the limit" in reply, reply[:200]
    _answers_next_client(server, observation)


def test_memory_stays_bounded_under_bad_clients(server, observation):
    """Oversized and malformed messages again and again: the server keeps nothing of them."""
    big = b"\0" * (MAX_MESSAGE // 2)

    def abuse(n):
        for _ in range(n):
            client = Client(server.ws_url)
            client.send(b"\xc1" + big)  # malformed, half the limit
            client.conn.send(b"\0" * (MAX_MESSAGE + 1))  # oversized: closed
            try:
                client.conn.recv(10)
            except ConnectionClosed:
                pass

    abuse(3)  # warm-up: lazily made objects exist before the measurement
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    abuse(10)  # 10 x 1.5 limits of traffic
    time.sleep(0.2)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert grown < MAX_MESSAGE, f"{grown} bytes kept after bad clients"
    stats = server.stats()
    assert stats["waiting"] == 0 and stats["running"] == 0
    _answers_next_client(server, observation)


def test_seed_step_zero_gives_every_query_the_base_seed(tiny_checkpoint, observation):
    from cosmos_policy.serve import PolicyServer

    from .conftest import load

    with PolicyServer(load(tiny_checkpoint), port=0, http_port=None, seed=196, max_batch=1) as one:
        assert one.http_url is None and "seed + 0 * k" in one.metadata["seed_rule"]
        client = Client(one.ws_url)
        try:
            assert [client.send(observation)["seed"] for _ in range(2)] == [196, 196]
        finally:
            client.close()
    with pytest.raises(ValueError, match="seed_step"):
        PolicyServer(object(), seed_step=-1)
