"""`cosmos-policy serve`: serve a policy over openpi's websocket protocol and the official HTTP `/act`.

Without `--checkpoint` the server runs a random-weight model of `--config` (tiny: a tiny checkpoint written to a
temporary folder; 2b: the full-size network in memory), to try the protocol. Both ports are bound before the model
loads (a port in use is reported at once) and listen only after `policy.warmup()`. Ctrl-C stops the server.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import tempfile

from ..cli import argtypes, variant
from ..errors import UsageError, missing_extra
from ..model.layout import LAYOUTS

SERVE_MODULES = (("websockets", "websockets"), ("msgpack", "msgpack"), ("starlette", "starlette"),
                 ("uvicorn", "uvicorn"))








def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..testing import LIBERO_SAMPLE_TASK

    parser.add_argument("--checkpoint", help="official checkpoint directory or Hugging Face repo id "
                                             "(default: random weights of --config)")
    parser.add_argument("--vae", help="Wan2.1 VAE weights (tokenizer/tokenizer.pth), when the checkpoint lacks them")
    parser.add_argument("--config", choices=["tiny", "2b"], default=None,
                        help="network size (default: tiny on the CPU, 2b on a GPU; from the checkpoint when given)")
    parser.add_argument("--suite", choices=sorted(LAYOUTS), default=None, help="default: the checkpoint's, or libero")
    parser.add_argument("--backend", choices=["fused", "reference"], default="fused")
    parser.add_argument("--device", default=None, help="default: cuda when a GPU is visible, else cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="default: bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--seed", type=argtypes.seed, default=195,
                        help="the seed of every query (the official rule: the LIBERO evaluation and ALOHA deployment "
                             "seed every action query with their --seed)")
    parser.add_argument("--seed-step", type=argtypes.seed, default=0,
                        help="a connection's k-th query uses seed + seed_step * k (1: a new seed per query)")
    parser.add_argument("--task", default=LIBERO_SAMPLE_TASK,
                        help="the instruction the random-weight model knows (without --checkpoint)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=argtypes.port, default=8000,
                        help="websocket port (openpi protocol; 0: any free)")
    parser.add_argument("--http-port", type=argtypes.port, default=8777, help="HTTP port of POST /act (0: any free)")
    parser.add_argument("--no-http", action="store_true", help="serve the websocket front end only")
    parser.add_argument("--queue", type=argtypes.positive, default=32,
                        help="requests that may wait; beyond that a request is answered 'busy' at once")
    parser.add_argument("--max-batch", type=argtypes.positive, default=8,
                        help="requests waiting together run as one batch of at most this many (1: every "
                             "answer bit-identical to policy.infer; batched ones agree to float rounding)")
    parser.add_argument("--warmup-all-instructions", action="store_true",
                        help="warm up (capture, on CUDA) every instruction of the checkpoint, not only the first: "
                             "no task's first query pays a graph capture, at the cost of start-up time and memory")
    parser.add_argument("--max-message-mb", type=argtypes.positive, default=32, help="largest accepted message, MiB")
    argtypes.add_steps_argument(parser)
    argtypes.add_fp8_argument(parser)
    variant.add_variant_argument(parser)


def require_extras() -> None:
    for module, _ in SERVE_MODULES:
        try:
            __import__(module)
        except ImportError:
            raise missing_extra(module, "serve") from None


def _bind(host: str, port: int, flag: str):
    from .server import bind

    try:
        return bind(host, port)
    except OSError as err:
        reason = "in use" if err.errno in (98, 48, 10048) else (err.strerror or str(err))
        raise UsageError(f"{flag} {port}: cannot listen on {host}:{port} ({reason})") from None


def load_policy(args: argparse.Namespace, tmp: str):
    """The policy of `--checkpoint` (or random weights of `--config`), errors naming the flag."""
    import torch

    from ..cli.demo import DTYPES, load_policies
    from ..policy import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as err:
        raise UsageError(f"--device {args.device}: {str(err).removeprefix('device: ')}") from None
    dtype = DTYPES[args.dtype] if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if args.checkpoint is None and args.config is None:
        args.config = "2b" if device.type == "cuda" else "tiny"
    policies, what = load_policies(args, device, dtype, tmp)
    return next(iter(policies.values())), what


def _instructions(policy) -> list[str]:
    known = getattr(policy.text, "instructions", None)
    return list(known() if callable(known) else known or [])


def run(args: argparse.Namespace) -> int:
    require_extras()
    from .server import PolicyServer

    if not args.no_http and args.port == args.http_port and args.port != 0:
        raise UsageError(f"--http-port {args.http_port}: the same port as --port")
    # bind first: a port in use is found before minutes of loading
    ws_sock = _bind(args.host, args.port, "--port")
    http_sock = None if args.no_http else _bind(args.host, args.http_port, "--http-port")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            policy, what = load_policy(args, tmp)
            server = PolicyServer(policy, host=args.host, seed=args.seed, seed_step=args.seed_step,
                                  max_queue=args.queue, max_batch=args.max_batch,
                                  max_message_bytes=args.max_message_mb * 2**20,
                                  sockets=(ws_sock, http_sock), http_port=None if args.no_http else args.http_port,
                                  warmup_instructions=_instructions(policy) if args.warmup_all_instructions else None)
        except BaseException:
            ws_sock.close()
            if http_sock is not None:
                http_sock.close()
            raise
        print(f"cosmos-policy serve: {what['config']} model ({what['checkpoint']}), suite {policy.layout.name}, "
              f"chunk {policy.layout.chunk_size} x {policy.layout.action_dim}, on {policy.device}; warming up",
              flush=True)

        def ready():
            http_text = f", http {server.http_url}/act" if server.http_url else ""
            print(f"cosmos-policy serve: ready after {server.warmup_ms:.0f} ms of warm-up: websocket "
                  f"{server.ws_url}{http_text}, healthz on both; Ctrl-C stops", flush=True)

        async def main():
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(sig, server.request_stop)
                except (NotImplementedError, RuntimeError):
                    pass
            await server.serve_async(on_ready=ready)

        asyncio.run(main())
    print("cosmos-policy serve: stopped", file=sys.stderr)
    return 0
