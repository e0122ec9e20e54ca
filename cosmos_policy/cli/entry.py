"""`cosmos-policy` (also `python -m cosmos_policy`): the command line of Cosmos Policy.

    cosmos-policy [demo] [options]     one action chunk per query, its actions and a per-stage latency report
    cosmos-policy roofline [options]   launches, FLOPs, bytes and predicted GPU time of one pass, on the meta device

Every user error is one line `cosmos-policy: error: ...` on stderr naming the flag or the file, with exit code 2 and
no traceback (`--debug` shows it). A subcommand lives in its own module, imported only when it runs, which exposes
`add_arguments(parser)` and `run(args) -> int` and raises `UsageError` for mistakes in what the user asked for.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from pathlib import Path

from ..errors import UsageError

PROG = "cosmos-policy"
DEFAULT_COMMAND = "demo"

# subcommand -> (module, one-line help); `serve` and `eval` are added the same way
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("cosmos_policy.cli.demo", "run the policy on one observation and report the latency of every stage"),
    "roofline": ("cosmos_policy.cli.roofline", "count launches, FLOPs and bytes of one pass and predict GPU times"),
    "eval": ("cosmos_policy.evaluation.cli", "closed-loop evaluation in a simulator (LIBERO), resumable, on Ray"),
    "serve": ("cosmos_policy.serve.command", "serve the policy to robot clients (openpi websocket, HTTP /act)"),
    "loadtest": ("cosmos_policy.serve.loadtest", "bounded load on a running server: latency percentiles, req/s"),
    "backends": ("cosmos_policy.cli.backends", "the backends each op can use here, the attention choices on disk"),
}

# Library errors that describe the user's input (a file, a flag) when raised while loading what the user named;
# a subcommand turns them into `UsageError` around its loading step only.
USER_ERRORS = (UsageError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)

SAMPLE_NAME = "libero_sample_observation.npz"


def default_data_dir() -> Path:
    """../shared/data beside the repository root (COSMOS_POLICY_DATA overrides it)."""
    if "COSMOS_POLICY_DATA" in os.environ:
        return Path(os.environ["COSMOS_POLICY_DATA"])
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


class ArgumentParser(argparse.ArgumentParser):
    """argparse's own errors (unknown choice, bad number) as `UsageError`, so they read like every other error."""

    def error(self, message: str):
        raise UsageError(message)


def one_line(err: BaseException) -> str:
    """An exception's message on one line (multi-line library messages are joined)."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__


def flag_error(flag: str, value, err: BaseException) -> UsageError:
    """`err` as the error of `flag VALUE`, naming the value once (library messages often start with it already):
    "x: no such file" -> "--flag x: no such file", "'x' is not a device" -> "--flag x: not a device"."""
    message = one_line(err)
    text = str(value)
    if message.startswith(text):
        return UsageError(f"{flag} {message}")
    if message.startswith(f"{text!r} is "):
        message = message[len(repr(text)) + len(" is "):]
    return UsageError(f"{flag} {text}: {message}")


def device_error(flag: str, value, err: BaseException) -> UsageError:
    """A `resolve_device` error ("device: cuda asked for, but no CUDA GPU is available") as the error of `flag`
    ("--device cuda: no CUDA GPU is available")."""
    message = one_line(err).removeprefix("device: ").removeprefix(f"{value} asked for, but ")
    return flag_error(flag, value, ValueError(message))


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless its help already says it, or there is none to show (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False \
                or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def build_parser(command: str | None) -> ArgumentParser:
    """The parser, with the arguments of `command` only (the other subcommands' modules are not imported)."""
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog=f"Without a subcommand, {PROG} runs `{DEFAULT_COMMAND}`. "
                                   f"`{PROG} COMMAND --help` lists a subcommand's options.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    for name, (_, help_text) in COMMANDS.items():
        child = sub.add_parser(name, help=help_text, description=help_text,
                               formatter_class=HelpFormatter)
        child.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                           help="show the traceback of an error")
        if name == command:
            _load(name).add_arguments(child)
    return parser


def _load(command: str):
    module_name = COMMANDS[command][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name == module_name:  # the subcommand itself is absent, not one of its dependencies
            raise UsageError(f"{command}: not available in this installation ({module_name} is missing)") from None
        raise


def _command_of(argv: list[str]) -> tuple[str | None, list[str]]:
    """The subcommand named in `argv` (inserting the default one before its options when none is named)."""
    rest = [a for a in argv if a != "--debug"]
    if not rest:
        return DEFAULT_COMMAND, [*argv, DEFAULT_COMMAND]
    first = rest[0]
    if first in COMMANDS:
        return first, argv
    if first in ("-h", "--help") or not first.startswith("-"):
        return None, argv  # top-level help, or an unknown command argparse will name
    i = argv.index(first)
    return DEFAULT_COMMAND, [*argv[:i], DEFAULT_COMMAND, *argv[i:]]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        command, argv = _command_of(argv)
        args = build_parser(command).parse_args(argv)
        return int(_load(args.command).run(args) or 0)
    except UsageError as err:  # anything else is a bug and keeps its traceback
        if debug:
            traceback.print_exc()
        print(f"{PROG}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
