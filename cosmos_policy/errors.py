"""User-facing errors of the command line: one line, exit code 2, no traceback (``--debug`` shows it)."""

from __future__ import annotations


class UsageError(Exception):
    """A mistake in what the user asked for (a flag, a file, a missing extra), reported as one line.

    The message names the flag or the file and what was expected, e.g.
    ``--checkpoint /x: no such directory``.
    """


class CorruptFileError(UsageError):
    """A file that exists but cannot be read as what it should be (truncated, not a checkpoint)."""


def missing_extra(module: str, extra: str) -> UsageError:
    """The error for an optional dependency that is not installed, naming the pip command that brings it."""
    return UsageError(f"{module} is not installed; it comes with the [{extra}] extra: "
                      f"pip install \"cosmos-kernels[{extra}]\"")
