"""`PolicyServer`: one policy, two front ends (openpi websocket, HTTP `/act`) on one event loop.

The listening sockets are bound when the server is made (a port in use fails at once, before minutes of model
loading) but only listen once `policy.warmup()` is done, so no client waits on compilation or graph capture.
`start()` runs the server in a background thread (tests, notebooks); `serve_forever()` runs it in the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading

from .engine import InferenceEngine

log = logging.getLogger("cosmos_policy.serve")

DEFAULT_MAX_MESSAGE_BYTES = 32 * 2**20  # three 480x640 cameras are 2.8 MB; far more is a mistake or an attack
PROTOCOL = "openpi-msgpack-numpy"


def bind(host: str, port: int) -> socket.socket:
    """A bound TCP socket, not yet listening (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def metadata(policy, seed: int, engine: InferenceEngine, max_message_bytes: int, seed_step: int = 0) -> dict:
    """What a client needs to know: the model, its chunk, the observation it expects and the rules of the server."""
    layout = policy.layout
    known = getattr(policy.text, "instructions", None)
    instructions = list(known() if callable(known) else known or [])
    observation = {camera: {"dtype": "uint8", "shape": [None, None, 3]} for camera in layout.cameras}
    observation["proprio"] = {"dtype": "float32", "shape": [layout.proprio_dim]}
    observation["task_description"] = {"dtype": "str", "shape": []}
    return {
        "model": "cosmos-policy",
        "suite": layout.name,
        "chunk_size": layout.chunk_size,
        "action_dim": layout.action_dim,
        "proprio_dim": layout.proprio_dim,
        "num_steps": policy.num_steps,
        "image_size": getattr(policy, "image_size", 224),
        "observation": observation,
        "instructions": instructions[:1000],
        "seed": seed,
        "seed_step": seed_step,
        "seed_rule": f"a websocket connection's k-th query uses seed + {seed_step} * k; {{'__ctrl__': "
                     f"'episode_start'}} restarts k; HTTP /act uses the request's seed, else the server's counter",
        "protocol": PROTOCOL,
        "max_batch": engine.max_batch,
        "max_queue": engine.max_queue,
        "max_message_bytes": max_message_bytes,
    }


class PolicyServer:
    """Serve `policy` over websocket (`port`) and HTTP (`http_port`; None: no HTTP front end).

    `seed_step`: the k-th query of a connection uses `seed + seed_step * k` (0: every query uses `seed`).
    `warmup_instructions`: the instructions warmed up (captured, on CUDA) for every batch size; default: the
    policy's first one (another instruction's first query then pays its capture).
    `sockets`: (websocket, http or None) sockets already bound with `bind`, used instead of `port` / `http_port`."""

    def __init__(self, policy, host: str = "127.0.0.1", port: int = 8000, http_port: int | None = 8777, *,
                 seed: int = 195, seed_step: int = 0, max_queue: int = 32, max_batch: int = 8,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, sockets: tuple | None = None,
                 warmup_instructions: list[str] | None = None):
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise ValueError(f"seed: expected an int in [0, 2**32), got {seed!r}")
        if isinstance(seed_step, bool) or not isinstance(seed_step, int) or seed_step < 0:
            raise ValueError(f"seed_step: expected an int >= 0, got {seed_step!r}")
        if isinstance(max_message_bytes, bool) or not isinstance(max_message_bytes, int) or max_message_bytes < 1:
            raise ValueError(f"max_message_bytes: expected an int >= 1, got {max_message_bytes!r}")
        self.policy, self.host, self.seed, self.max_message_bytes = policy, host, seed, max_message_bytes
        self.seed_step = seed_step
        self.engine = InferenceEngine(policy, max_queue=max_queue, max_batch=max_batch)
        self.metadata = metadata(policy, seed, self.engine, max_message_bytes, seed_step)
        if sockets is not None:
            self._ws_sock, self._http_sock = sockets
        else:
            self._ws_sock = bind(host, port)
            try:
                self._http_sock = bind(host, http_port) if http_port is not None else None
            except OSError:
                self._ws_sock.close()
                raise
        self.port = self._ws_sock.getsockname()[1]
        self.http_port = self._http_sock.getsockname()[1] if self._http_sock is not None else None
        self.warmup_ms: float | None = None
        self.warmup_instructions = warmup_instructions
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.websocket = self.http = None

    @property
    def ws_url(self) -> str:
        return f"ws://{_url_host(self.host)}:{self.port}"

    @property
    def http_url(self) -> str | None:
        return None if self.http_port is None else f"http://{_url_host(self.host)}:{self.http_port}"

    def stats(self) -> dict:
        return {**self.engine.stats(), "websocket_connections": self.websocket.connections if self.websocket else 0,
                "warmup_ms": self.warmup_ms}

    # -- running ----------------------------------------------------------------------------------------------------

    async def serve_async(self, on_ready=None) -> None:
        """Warm up, listen on both ports, serve until `stop()`."""
        from websockets.asyncio.server import serve

        from .websocket import WebsocketFrontEnd, healthz

        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        if self.warmup_ms is None:
            self.warmup_ms = await asyncio.to_thread(self.engine.warmup, self.warmup_instructions)
        self.engine.start()
        self.websocket = WebsocketFrontEnd(self)
        ws = await serve(self.websocket.handle, sock=self._ws_sock, process_request=healthz, compression=None,
                         max_size=self.max_message_bytes, max_queue=4, ping_interval=20, ping_timeout=60)
        http_task = None
        try:
            if self._http_sock is not None:
                http_task = asyncio.create_task(self._serve_http())
                while self.http is None or not self.http.started:  # ready means both ports listen
                    if http_task.done():
                        http_task.result()  # its startup error
                        raise RuntimeError("the HTTP front end stopped during its startup")
                    await asyncio.sleep(0.005)
            if on_ready is not None:
                on_ready()
            log.info("serving %s (openpi websocket)%s", self.ws_url,
                     f" and {self.http_url}/act (HTTP)" if self.http_url else "")
            stop = asyncio.create_task(self._stop.wait())
            waits = {stop} | ({http_task} if http_task else set())
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if http_task in done and http_task.exception() is not None:
                raise http_task.exception()
        finally:
            ws.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.wait_closed(), 5)
            if http_task is not None and self.http is not None:
                self.http.should_exit = True
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(http_task, 5)
            self.engine.close()
            self._close_sockets()

    async def _serve_http(self) -> None:
        import uvicorn

        from .http import HttpFrontEnd

        front = HttpFrontEnd(self)
        config = uvicorn.Config(front.app, log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=2)
        self.http = uvicorn.Server(config)
        self.http.install_signal_handlers = lambda: None  # the caller owns the signals
        await self.http.serve(sockets=[self._http_sock])

    def serve_forever(self) -> None:
        asyncio.run(self.serve_async())

    def start(self, timeout: float = 600.0) -> PolicyServer:
        """Serve from a background thread; returns once both ports listen (after the warm-up)."""
        def main():
            try:
                asyncio.run(self.serve_async(on_ready=self._ready.set))
            except BaseException as err:  # noqa: BLE001 - handed to the thread that called start()
                self._error = err
                self._ready.set()

        self._thread = threading.Thread(target=main, name="cosmos-policy-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the server did not start within {timeout} s")
        if self._error is not None:
            raise self._error
        return self

    def request_stop(self) -> None:
        """Stop serving (from the server's own event loop, e.g. a signal handler)."""
        if self._stop is not None:
            self._stop.set()

    def stop(self, timeout: float = 30.0) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
        self._close_sockets()

    def _close_sockets(self) -> None:
        for sock in (self._ws_sock, self._http_sock):
            if sock is not None:
                sock.close()

    def __enter__(self) -> PolicyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
