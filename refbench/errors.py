"""User-facing errors.

Anything a user can fix (a missing file, a wrong name, a bad value) is raised as ``UserError``;
the CLI prints it as one line and exits with status 2. Everything else is a bug and keeps its
traceback, so the two are never confused.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem with the user's input, reported without a traceback (exit status 2).

    ``fix_args`` are command-line arguments that would make the command run (on the bundled
    model, say): the command line prints the whole command with them added."""

    def __init__(self, message: str, fix_args: list[str] | None = None):
        super().__init__(message)
        self.fix_args = list(fix_args or [])


def did_you_mean(name: str, known: Iterable[str], what: str) -> UserError:
    """Build the error for an unknown ``name``, suggesting the closest known names."""
    known = sorted(known)
    same_but_case = [k for k in known if k.lower() == name.lower()]
    close = same_but_case or difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    listing = ", ".join(known) if known else "(none installed)"
    return UserError(f"unknown {what} {name!r}{hint} (known: {listing})")


def one_line(error: BaseException, width: int = 200) -> str:
    """A library's message on one line (some span several), cut to ``width`` characters."""
    return " ".join(str(error).split())[:width]
