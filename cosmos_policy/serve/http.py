"""The HTTP front end: `POST /act` as the official ALOHA deployment client speaks it, on Starlette.

Request: a JSON object with numpy arrays in the `json_numpy` format (or plain nested lists), holding the suite's
cameras (`primary_image`, `wrist_image` / `left_wrist_image`, `right_wrist_image`, ...), `proprio` and
`task_description`; optional `seed` (else the server's counter: `seed`, `seed + 1`, ... one per accepted `/act` call
without one; `POST /reset` restarts it) and `return_future_images`. The form `{"encoded": "<json string>"}` is
accepted too and answered the same way (a JSON string inside the JSON reply).

Reply: `actions` (chunk, action_dim) float32, `value` (also as `value_prediction` and `value_predictions`, the
names the official server and client use), `seed`, `future_image_predictions` (camera -> uint8 image, or null
unless asked), `server_timing`, `policy_timing`. Errors: 400 with `{"error": ...}` for a bad request, 413 for an
oversized body, 503 when the queue is full, 500 for a failure inside the policy.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from . import wire
from .engine import SEED_LIMIT, Busy, InputError

OPTIONS = ("seed", "return_future_images", "return_all_query_results")


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status_code=status)


def _as_image(value, key: str):
    """Nested lists of 0..255 (the official client's fallback) -> uint8; arrays are left to the policy's check."""
    if isinstance(value, list):
        try:
            array = np.asarray(value)
        except ValueError:
            raise HttpError(400, f"{key}: not a rectangular nested list") from None
        if array.dtype.kind not in "iu" or (array.size and (array.min() < 0 or array.max() > 255)):
            raise HttpError(400, f"{key}: expected whole numbers in 0..255 for a uint8 image")
        return array.astype(np.uint8)
    return value


class HttpFrontEnd:
    def __init__(self, server):
        self.server = server
        self.counter = 0  # `/act` calls answered without a seed of their own
        self.app = Starlette(routes=[
            Route("/act", self.act, methods=["POST"]),
            Route("/reset", self.reset, methods=["POST"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/metadata", self.metadata, methods=["GET"]),
            Route("/stats", self.stats, methods=["GET"]),
        ])

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("OK\n")

    async def metadata(self, request: Request) -> Response:
        return Response(wire.dumps(self.server.metadata), media_type="application/json")

    async def stats(self, request: Request) -> Response:
        return JSONResponse(self.server.stats())

    async def reset(self, request: Request) -> Response:
        self.counter = 0
        return JSONResponse({"next_seed": self.server.seed})

    async def _body(self, request: Request) -> bytes:
        limit = self.server.max_message_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise HttpError(413, f"request body of {declared} bytes is over the limit of {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():  # read in pieces so a body without a length stays bounded too
            size += len(chunk)
            if size > limit:
                raise HttpError(413, f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def act(self, request: Request) -> Response:
        received = time.perf_counter()
        try:
            payload = wire.loads(await self._body(request))
            encoded = isinstance(payload, dict) and "encoded" in payload
            if encoded:
                if len(payload) != 1 or not isinstance(payload["encoded"], str):
                    raise HttpError(400, "encoded: expected {\"encoded\": <JSON string>} and no other key")
                payload = wire.loads(payload["encoded"])
            obs = wire.observation_keys(payload)
            options = {key: obs.pop(key) for key in OPTIONS if key in obs}
            for camera in self.server.policy.layout.cameras:
                if camera in obs:
                    obs[camera] = _as_image(obs[camera], camera)
            seed = self._seed(options)
            future_images = options.get("return_future_images", False)
            if not isinstance(future_images, bool):
                raise HttpError(400, "return_future_images: expected true or false")
            future = self.server.engine.submit(obs, seed, future_images)
            if "seed" not in options:  # no await since the seed was read: concurrent calls get distinct seeds
                self.counter += 1
            result = await asyncio.wrap_future(future)
        except HttpError as err:
            return _error(err.status, str(err))
        except (wire.WireError, InputError) as err:
            return _error(400, str(err))
        except Busy as err:
            return _error(503, f"busy: {err}")
        except ClientDisconnect:
            return Response(status_code=400)
        except Exception as err:  # noqa: BLE001 - reported to this client, the server goes on
            return _error(500, str(err))
        timing = dict(result["server_timing"])
        reply = {"actions": result["actions"], "value": result["value"], "value_prediction": result["value"],
                 "value_predictions": result["value"], "seed": result["seed"],
                 "future_image_predictions": result.get("future_images"), "policy_timing": result["timing"]}
        timing["total_ms"] = (time.perf_counter() - received) * 1e3
        reply["server_timing"] = timing
        text = wire.dumps(reply)
        return Response(wire.dumps(text) if encoded else text, media_type="application/json")

    def _seed(self, options: dict) -> int:
        if "seed" not in options:
            return (self.server.seed + self.server.seed_step * self.counter) % SEED_LIMIT
        seed = options["seed"]
        if isinstance(seed, np.integer):
            seed = int(seed)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
            raise HttpError(400, f"seed: expected an int in [0, 2**32), got {seed!r:.40}")
        return seed
