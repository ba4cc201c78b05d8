"""User-facing errors.

A `UserError` is a mistake the user can fix (bad task name, bad value, missing file). The CLI
prints its message as one line on stderr and exits with code 2, without a traceback. Anything
else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """An error caused by user input; `str(err)` is the single line shown to the user."""


class RunInterrupted(KeyboardInterrupt):
    """A second Ctrl-C ended a run without its final checkpoint; `str(err)` says what of the
    run is on disk and what is not (the CLI prints it after "ldmpc: interrupted")."""


def close_matches(word: str, options: Iterable[str], n: int = 3) -> str:
    """Return a ' (did you mean: a, b?)' suffix, or '' when nothing is close."""
    matches = difflib.get_close_matches(word, list(options), n=n, cutoff=0.6)
    return f" (did you mean: {', '.join(matches)}?)" if matches else ""
