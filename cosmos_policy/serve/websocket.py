"""The websocket front end, openpi's protocol: msgpack frames, a metadata message on connect, one reply per
observation, errors as text frames (the connection stays open for the next query), `GET /healthz`.

Seeds: a connection's k-th answered query uses `seed + k` (in general `seed + seed_step * k`; `--seed-step 0` gives
every query the base seed, as the official LIBERO evaluation does for a single-candidate policy). The control
message `{"__ctrl__": "episode_start"}` (optionally with `"seed": s`, the connection's new base seed) restarts k at
0 and is answered with `{"__ctrl__": "episode_start", "next_seed": ...}`; the stock openpi client's `reset()` sends
nothing, so a client that wants the per-episode seed sequence sends it with `client.infer({"__ctrl__": ...})`.
"""

from __future__ import annotations

import asyncio
import http
import logging
import time

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from . import wire
from .engine import SEED_LIMIT, Busy, InputError

log = logging.getLogger("cosmos_policy.serve")

CONTROL_KEY = "__ctrl__"
FUTURE_IMAGES_KEY = "return_future_images"


def healthz(connection: ServerConnection, request):
    """`process_request` hook: `GET /healthz` is answered over plain HTTP, other paths go on to the handshake."""
    if request.path.split("?", 1)[0] == "/healthz":
        return connection.respond(http.HTTPStatus.OK, "OK\n")
    return None


class WebsocketFrontEnd:
    def __init__(self, server):
        self.server = server  # PolicyServer: engine, metadata, base seed, limits
        self.connections = 0

    async def handle(self, connection: ServerConnection) -> None:
        self.connections += 1
        try:
            await connection.send(wire.pack(self.server.metadata))
            base, k = self.server.seed, 0
            async for message in connection:
                received = time.perf_counter()
                base, k = await self._one(connection, message, base, k, received)
        except ConnectionClosed:
            pass  # the client left, possibly mid-request: its result is dropped
        finally:
            self.connections -= 1

    async def _one(self, connection: ServerConnection, message, base: int, k: int, received: float):
        if isinstance(message, str):
            await connection.send("error: expected a binary msgpack frame, got a text frame")
            return base, k
        try:
            obs = wire.observation_keys(wire.unpack(message))
        except wire.WireError as err:
            await connection.send(f"error: {err}")
            return base, k
        if CONTROL_KEY in obs:
            return await self._control(connection, obs, base, k)
        future_images = obs.pop(FUTURE_IMAGES_KEY, False)
        if not isinstance(future_images, bool):
            await connection.send(f"error: {FUTURE_IMAGES_KEY}: expected true or false")
            return base, k
        seed = (base + self.server.seed_step * k) % SEED_LIMIT
        try:
            result = await asyncio.wrap_future(self.server.engine.submit(obs, seed, future_images))
        except Busy as err:
            await connection.send(f"busy: {err}")
            return base, k
        except InputError as err:
            await connection.send(f"error: {err}")
            return base, k
        except Exception as err:  # noqa: BLE001 - reported to this client, the server goes on
            await connection.send(f"error: {err}")
            return base, k
        reply = {"actions": result["actions"], "value": result["value"], "seed": result["seed"],
                 "policy_timing": result["timing"]}
        if "future_images" in result:
            reply["future_images"] = result["future_images"]
        timing = dict(result["server_timing"])
        timing["total_ms"] = (time.perf_counter() - received) * 1e3  # decode + queue + inference + encode
        reply["server_timing"] = timing
        await connection.send(wire.pack(reply))
        return base, k + 1

    async def _control(self, connection: ServerConnection, obs: dict, base: int, k: int):
        command = obs[CONTROL_KEY]
        if command != "episode_start":
            await connection.send(f"error: {CONTROL_KEY}: unknown control message {command!r} "
                                  f"(known: 'episode_start')")
            return base, k
        if "seed" in obs:
            seed = obs["seed"]
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
                await connection.send(f"error: seed: expected an int in [0, 2**32), got {seed!r:.40}")
                return base, k
            base = seed
        await connection.send(wire.pack({CONTROL_KEY: "episode_start", "next_seed": base}))
        return base, 0
