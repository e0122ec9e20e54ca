"""`--variant predict2|predict2.5` (demo, serve, eval, roofline) and eval's `--shift`: the flags, the network config of
a random-weight run of either variant, and the errors naming the flag."""

from __future__ import annotations

import argparse
import math

from ..errors import UsageError
from ..policy.flow import OFFICIAL_SHIFT, VARIANTS

VARIANT_HELP = ("Cosmos-Predict2 (T5 text, EDM sampler) or Cosmos-Predict2.5 (Reason1 text, rectified-flow UniPC) "
                "policy (default: the checkpoint's; without one, random weights of predict2)")


def add_variant_argument(parser: argparse.ArgumentParser, help: str = VARIANT_HELP) -> None:
    parser.add_argument("--variant", choices=VARIANTS, default=None, help=help)


def shift_value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def add_shift_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shift", type=shift_value, default=None, metavar="S",
                        help=f"the Predict2.5 sampler's time shift (default: the official {OFFICIAL_SHIFT:g}); "
                             "refused for predict2 policies")


def variant_of(args: argparse.Namespace) -> str | None:
    return getattr(args, "variant", None)


def check_shift(args: argparse.Namespace) -> None:
    """Refuse `--shift` with `--variant predict2` before anything loads."""
    if getattr(args, "shift", None) is not None and variant_of(args) == "predict2":
        raise UsageError(f"--shift {args.shift:g}: predict2 policies sample with the EDM sampler, which has no shift "
                         "(only --variant predict2.5 takes one)")


def policy_kwargs(args: argparse.Namespace) -> dict:
    """What `CosmosPolicy.from_pretrained` takes from the flags."""
    return {"variant": variant_of(args), "shift": getattr(args, "shift", None)}


def load_error(args: argparse.Namespace, err: BaseException) -> UsageError | None:
    """A loading error that is about `--shift` (a predict2 checkpoint) or `--variant`, as that flag's error."""
    from .entry import flag_error

    text = str(err)
    if text.startswith("shift: ") and getattr(args, "shift", None) is not None:
        return flag_error("--shift", f"{args.shift:g}", ValueError(text.removeprefix("shift: ")))
    if text.startswith("variant: ") and variant_of(args) is not None:
        return flag_error("--variant", args.variant, ValueError(text.removeprefix("variant: ")))
    return None


def network_config(size: str, variant: str | None):
    """The `DiTConfig` of a random-weight run: `size` "tiny" or "2b" of `variant` (None: predict2)."""
    from ..model.config import DiTConfig

    if variant == "predict2.5":
        return DiTConfig.cosmos_predict2_5_2b() if size == "2b" else DiTConfig.tiny_predict2_5()
    return DiTConfig.cosmos_predict2_2b() if size == "2b" else DiTConfig.tiny()
