"""Errors that end a run with one clear sentence instead of a traceback.

Entry points (``main_v2.py``, ``val.py``, scripts) catch :class:`UserError`, print its message
to stderr and exit with status 2. Raise it for anything the user can fix: a missing data folder,
a download that failed offline, a malformed list file, a truncated checkpoint, an impossible
setting. The message says what is wrong and what to do.
"""


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
