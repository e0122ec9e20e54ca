"""argparse value types of the command line: a bad value is one line naming what was expected."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def whole_number(low: int, high: int | None = None, what: str | None = None) -> Callable[[str], int]:
    """An int in [low, high] (no upper bound when `high` is None)."""
    expected = what or (f"a whole number >= {low}" if high is None else f"a whole number {low}..{high}")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return parse


positive = whole_number(1)
port = whole_number(0, 65535, "a port number 0..65535")
seed = whole_number(0, 2**32 - 1, "a whole number in [0, 2**32)")
MAX_STEPS = 100
STEPS_HELP = ("denoising passes per action chunk (default: the suite's official count, 5 for LIBERO and RoboCasa, "
              "10 for ALOHA); 1 or 2 make one prediction at sigma_max, as the official sampler does. Fewer passes are "
              "faster and approximate")
steps = whole_number(1, MAX_STEPS)


def add_steps_argument(parser: argparse.ArgumentParser) -> None:
    """`--steps N`, shared by demo, serve, eval and roofline (None: the suite's official count)."""
    parser.add_argument("--steps", type=steps, default=None, metavar="N", help=STEPS_HELP)


FP8_HELP = ("run the DiT blocks' token GEMMs in FP8 e4m3 (approximate; off by default). Needs the fused backend and "
            "a GPU with FP8 tensor cores (compute capability 8.9 or newer: Ada, Hopper, Blackwell) in bfloat16, or "
            "the CPU")


def add_fp8_argument(parser: argparse.ArgumentParser) -> None:
    """`--fp8`, shared by demo, serve, eval and roofline (False: the network's own dtype)."""
    parser.add_argument("--fp8", action="store_true", help=FP8_HELP)


def check_fp8(args: argparse.Namespace, device, dtype, backend: str = "fused") -> None:
    """A `UsageError` naming `--fp8` when `args.fp8` is set and `backend` on `device` in `dtype` cannot run it."""
    if not getattr(args, "fp8", False):
        return
    from ..errors import UsageError
    from ..policy import check_fp8 as check

    try:
        check(backend, device, dtype)
    except ValueError as err:
        raise UsageError(f"--fp8: {str(err).removeprefix('fp8=True: ')}") from None


def seconds(text: str) -> float:
    """A duration > 0 in seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {value}")
    return value
