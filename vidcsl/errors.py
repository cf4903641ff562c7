"""The project's error types: what a user got wrong, as opposed to a bug.

The command line (``vidcsl.cli.main``) prints a :class:`VidcslError` as one line and exits with status 2,
and a :class:`Preempted` command (SIGTERM / SIGINT) as one line with status 3; any other exception is a
bug and keeps its full traceback. Each user-error type also derives from ``ValueError``, so library callers
that catch ``ValueError`` keep working.

    raise ConfigError("config key 'optim.lr' must be > 0, got -1.0")
"""

from __future__ import annotations

EXIT_USER_ERROR = 2


class VidcslError(ValueError):
    """A user error with a message that names what is wrong and where (a key, a file, a value)."""


class ConfigError(VidcslError):
    """A config file, key, type or value is wrong (raised before anything trains)."""


class DataError(VidcslError):
    """A dataset path, split file or list is missing or malformed, or no usable sample is left."""


class CheckpointError(VidcslError):
    """A checkpoint is missing, unreadable, untrusted, non-finite or does not fit the config."""


class UsageError(VidcslError):
    """A command-line value is wrong (e.g. an empty epsilon list, a non-positive frame count)."""


class RunFolderError(VidcslError):
    """A run folder cannot be used: locked by another process, read-only, or the disk is full."""


EXIT_PREEMPTED = 3


class Preempted(BaseException):
    """SIGTERM / SIGINT stopped a command; what it finished is kept and rerunning it continues (exit 3).

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` (e.g. around decoding one
    video) swallows the request to stop.
    """

    exit_code = EXIT_PREEMPTED
