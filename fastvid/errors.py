"""Errors a user can cause and fix, apart from bugs: the `fastvid` command prints a `UserError` as one line
and exits 2 (`--debug` adds the traceback); any other exception is a bug in fastvid and keeps its traceback.

Each class also derives from the built-in error it refines, so `except ValueError` / `except OSError` code
keeps working. No fastvid import here: every module may raise these, and the CLI reads them without torch.
"""
from __future__ import annotations


class UserError(Exception):
    """Something the user gave (a config, a flag, a file, a folder, the data) is not usable; the message
    names it and the fix."""


class InputError(UserError, ValueError):
    """A file or value the user gave is not what the command needs (a checkpoint without the asked
    encoder, shards without labels, too few videos)."""


class MissingFile(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class WriteFailed(UserError, OSError):
    """Writing an output failed for a reason outside fastvid (a full disk, no permission)."""


class RunError(UserError, ValueError):
    """A run cannot start as asked (output folder, device, data); the message names the fix."""


class NonFiniteLossError(UserError, FloatingPointError):
    """A loss term became NaN or inf; the run stops before that step changes any weight (exit status 1)."""


class Interrupted(Exception):
    """SIGINT/SIGTERM stopped the run after a checkpoint; `code` is the exit status (128 + signal number)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.code = 128 + signum
