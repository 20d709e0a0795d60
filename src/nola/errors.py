"""The project's user-facing error type.

Every problem a user can cause (a bad file, a missing key, a wrong config) is raised as
`NolaError` with a one-line message naming the file/line/key and what to do. Entry points catch it
and print the message without a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import TypeVar

T = TypeVar("T")


class NolaError(Exception):
    """A problem with the user's input, files or environment, with a message saying what to do."""


INTERRUPTED_EXIT = 130  # the shell's code for a command ended by SIGINT


def exit_on_user_error(main: Callable[..., T]) -> Callable[..., T]:
    """Wrap a CLI entry point: a `NolaError` prints `error: <message>` and exits with status 2;
    Ctrl-C prints one line and exits with 130 (every file is written atomically, so what was
    finished is kept and nothing half-written is left under a final name)."""

    @wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except NolaError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted; finished outputs kept", file=sys.stderr)
            raise SystemExit(INTERRUPTED_EXIT) from None

    return wrapper
