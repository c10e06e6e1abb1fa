"""Errors that end a run with one clear sentence instead of a traceback.

Entry points (``main_v2.py``, ``val.py``, scripts) catch :class:`UserError`, print its message
to stderr and exit with status 2. Raise it for anything the user can fix: a missing data folder,
a download that failed offline, a malformed list file, a truncated checkpoint, an impossible
setting. The message says what is wrong and what to do.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import ParamSpec, TypeVar

E = TypeVar("E", bound=BaseException)
P = ParamSpec("P")
R = TypeVar("R")


class UserError(Exception):
    """A problem with the user's input or environment, reported as one sentence."""


class DataError(UserError):
    """A dataset, list file or image that is missing, unreadable or malformed."""


class ConfigError(UserError):
    """A configuration value that cannot work (e.g. nbit < 1, a batch too small to pair)."""


class CheckpointError(UserError):
    """A checkpoint or run directory that is missing, truncated or incompatible."""


class TrainingError(UserError):
    """Training cannot go on (e.g. the loss became NaN)."""


def error_in(error: BaseException | None, kind: type[E]) -> E | None:
    """The first exception of type ``kind`` in ``error``'s chain (itself, then its ``__cause__``
    or ``__context__``, ...), or None. Hydra's instantiate wraps constructor errors this way."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def user_error_in(error: BaseException) -> UserError | None:
    """The UserError behind an exception, if any."""
    return error_in(error, UserError)


@contextmanager
def settings_of(key: str) -> Iterator[None]:
    """Build an object from the config node ``key`` (e.g. "model.loss"): a ValueError its
    constructor raises (a setting it cannot use) becomes a ConfigError naming the node, so the
    entry points print it as one sentence. Losses and layers raise plain ValueErrors."""
    try:
        yield
    except Exception as error:
        if error_in(error, UserError) is not None:
            raise
        bad_value = error_in(error, ValueError)
        if bad_value is None:
            raise
        raise ConfigError(f"Bad setting under {key}: {bad_value}") from None


def exit_on_user_error(
    function: Callable[P, R], interrupted: str | None = "interrupted: resume with resume=<run dir>"
) -> Callable[P, R]:
    """Turn a UserError into one line on stderr and exit status 2 (no traceback), and Ctrl-C
    into the line ``interrupted`` and exit status 130 (None: Ctrl-C is raised as is). Wraps
    every entry point's and script's ``main``."""

    @wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return function(*args, **kwargs)
        except Exception as error:
            user_error = user_error_in(error)
            if user_error is None:
                raise
            from utils.distributed import rank

            # torchrun: rank 0 says it; another rank says it too, named, in case it alone failed
            print(
                ("" if rank() == 0 else f"rank {rank()}: ") + f"error: {user_error}",
                file=sys.stderr,
            )
            sys.exit(2)
        except KeyboardInterrupt:
            if interrupted is None:
                raise
            print(interrupted, file=sys.stderr)
            sys.exit(130)

    return wrapper
