"""`cosmos-policy loadtest`: bounded load from local clients on a running `cosmos-policy serve`.

`--clients K` threads each send `--requests M` observations one after another (a client waits for its reply before
the next send, as a robot does), over the websocket protocol (`ws://`) or HTTP `/act` (`http://`); the run stops
after `--duration` seconds whatever is left. The observation is `--observation FILE.npz` (the keys of an observation)
or a synthetic one built from the server's metadata. Prints p50 / p95 / p99 of the round trip and of the server's
own time, errors, and requests per second; `--out FILE` writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np

from ..cli import argtypes
from ..errors import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default="ws://127.0.0.1:8000",
                        help="ws://HOST:PORT (openpi websocket) or http://HOST:PORT[/act] (HTTP)")
    parser.add_argument("--clients", type=argtypes.positive, default=8, help="concurrent clients")
    parser.add_argument("--requests", type=argtypes.positive, default=50, help="requests per client")
    parser.add_argument("--duration", type=argtypes.seconds, default=600.0, help="stop after this many seconds")
    parser.add_argument("--timeout", type=argtypes.seconds, default=120.0, help="seconds to wait for one reply")
    parser.add_argument("--observation", type=Path, default=None,
                        help="an .npz of observation arrays (default: synthetic, from the server's metadata)")
    parser.add_argument("--task", default=None, help="instruction (default: the first one the server knows)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "mean": None, "max": None, "n": 0}
    a = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "max": float(a.max()), "n": len(values)}


# -- clients ----------------------------------------------------------------------------------------------------------

class _WebsocketClient:
    def __init__(self, url: str, timeout: float):
        from websockets.sync.client import connect

        from . import wire

        self.wire, self.timeout = wire, timeout
        self.conn = connect(url, max_size=None, compression=None, open_timeout=timeout)
        self.metadata = wire.unpack(self.conn.recv(timeout))

    def infer(self, obs: dict) -> dict:
        self.conn.send(self.wire.pack(obs))
        reply = self.conn.recv(self.timeout)
        if isinstance(reply, str):
            raise RuntimeError(reply)
        return self.wire.unpack(reply)

    def close(self) -> None:
        self.conn.close()


class _HttpClient:
    def __init__(self, url: str, timeout: float):
        from . import wire

        self.wire, self.timeout = wire, timeout
        parts = urllib.parse.urlsplit(url)
        root = f"{parts.scheme}://{parts.netloc}"
        self.act_url = root + (parts.path if parts.path not in ("", "/") else "/act")
        with urllib.request.urlopen(root + "/metadata", timeout=timeout) as response:
            self.metadata = wire.loads(response.read())

    def infer(self, obs: dict) -> dict:
        request = urllib.request.Request(self.act_url, data=self.wire.dumps(obs).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return self.wire.loads(response.read())
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"HTTP {err.code}: {err.read()[:200].decode('utf-8', 'replace')}") from None

    def close(self) -> None:
        pass


def connect(url: str, timeout: float):
    """A client for `url`; an unreachable or malformed URL is a `UsageError` naming `--url`."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("ws", "wss", "http", "https"):
        raise UsageError(f"--url {url}: expected ws://HOST:PORT or http://HOST:PORT")
    try:
        return _WebsocketClient(url, timeout) if scheme.startswith("ws") else _HttpClient(url, timeout)
    except UsageError:
        raise
    except Exception as err:  # noqa: BLE001 - refused, unknown host, not a policy server: all one line
        text = " ".join(str(err).split()) or type(err).__name__
        raise UsageError(f"--url {url}: cannot reach a policy server ({text})") from None


def observation_for(metadata: dict, path: Path | None, task: str | None, seed: int = 0) -> dict:
    if path is not None:
        try:
            with np.load(path) as data:
                obs = {key: np.asarray(data[key]) for key in data.files}
        except (OSError, ValueError) as err:
            raise UsageError(f"--observation {path}: cannot read it as .npz ({err})") from None
    else:
        rng = np.random.default_rng(seed)
        obs = {}
        for key, spec in metadata.get("observation", {}).items():
            if spec.get("dtype") == "uint8":
                obs[key] = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
            elif key == "proprio":
                obs[key] = rng.uniform(-0.5, 0.5, spec["shape"]).astype(np.float32)
    if task is None:
        instructions = metadata.get("instructions") or []
        if "task_description" in obs:
            task = str(obs["task_description"])
        elif instructions:
            task = instructions[0]
        else:
            raise UsageError("--task: the server names no instruction; give one")
    obs["task_description"] = task
    return obs


def run_load(url: str, clients: int, requests: int, duration: float = 600.0, timeout: float = 120.0,
             observation: Path | None = None, task: str | None = None) -> dict:
    """K clients x M sequential requests, bounded by `duration`; the summary as a dict."""
    first = connect(url, timeout)
    obs = observation_for(first.metadata, observation, task)
    pool = [first] + [connect(url, timeout) for _ in range(clients - 1)]
    deadline = time.perf_counter() + duration
    lock = threading.Lock()
    round_trip, server, queue, batch, errors = [], [], [], [], []
    sent = [0] * clients

    def client(index: int) -> None:
        conn = pool[index]
        try:
            for _ in range(requests):
                if time.perf_counter() > deadline:
                    return
                start = time.perf_counter()
                sent[index] += 1
                try:
                    reply = conn.infer(obs)
                    ms = (time.perf_counter() - start) * 1e3
                    timing = reply.get("server_timing", {})
                    shape = np.shape(reply.get("actions"))
                    ok = len(shape) == 2
                except Exception as err:  # noqa: BLE001 - counted, the load goes on
                    with lock:
                        errors.append(" ".join(str(err).split())[:200] or type(err).__name__)
                    continue
                with lock:
                    if not ok:
                        errors.append(f"reply without an action chunk (actions shape {shape})")
                        continue
                    round_trip.append(ms)
                    server.append(float(timing.get("total_ms", float("nan"))))
                    queue.append(float(timing.get("queue_ms", float("nan"))))
                    batch.append(float(timing.get("batch_size", 1)))
        finally:
            conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {
        "url": url, "clients": clients, "requests_per_client": requests, "planned": clients * requests,
        "sent": sum(sent), "ok": len(round_trip), "errors": len(errors), "not_sent": clients * requests - sum(sent),
        "error_samples": sorted(set(errors))[:5], "wall_s": wall,
        "requests_per_s": len(round_trip) / wall if wall > 0 else None,
        "round_trip_ms": percentiles(round_trip), "server_ms": percentiles(server),
        "queue_ms": percentiles(queue), "mean_batch_size": float(np.mean(batch)) if batch else None,
        "suite": first.metadata.get("suite"), "chunk_size": first.metadata.get("chunk_size"),
    }


def render(summary: dict) -> str:
    def row(name: str, p: dict) -> str:
        if not p["n"]:
            return f"  {name:<12} (no replies)"
        return f"  {name:<12} p50 {p['p50']:9.1f}  p95 {p['p95']:9.1f}  p99 {p['p99']:9.1f}  max {p['max']:9.1f} ms"

    lines = [f"loadtest {summary['url']}: {summary['clients']} clients x {summary['requests_per_client']} requests "
             f"in {summary['wall_s']:.1f} s",
             row("round trip", summary["round_trip_ms"]), row("server", summary["server_ms"]),
             row("queue", summary["queue_ms"]),
             f"  ok {summary['ok']} / {summary['planned']}, errors {summary['errors']}, not sent "
             f"{summary['not_sent']}, {summary['requests_per_s'] or 0:.2f} req/s, mean batch "
             f"{summary['mean_batch_size'] or 0:.2f}"]
    lines += [f"  error: {e}" for e in summary["error_samples"]]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from .command import require_extras

    require_extras()
    if args.out is not None and not args.out.parent.is_dir():
        raise UsageError(f"--out {args.out}: no such directory {args.out.parent}")
    if args.observation is not None and not args.observation.is_file():
        raise UsageError(f"--observation {args.observation}: no such file")
    summary = run_load(args.url, args.clients, args.requests, args.duration, args.timeout, args.observation,
                       args.task)
    print(render(summary))
    if args.out is not None:
        args.out.write_text(json.dumps(summary, indent=2))
    return 0 if summary["errors"] == 0 and summary["not_sent"] == 0 else 1
