"""The error types every muxdeploy layer raises; the CLI turns them into one line and an exit code."""

from __future__ import annotations


class MuxError(Exception):
    """A failure with a one-line message that says what is wrong and what to do."""

    exit_code = 1


class UserInputError(MuxError):
    """Bad usage or bad input (a file, a flag, an instance): exit code 2."""

    exit_code = 2


class ManifestError(UserInputError):
    """A bundle manifest that is missing, malformed or of a newer schema."""


class InstanceError(UserInputError):
    """One instance that cannot be packed (wrong type, empty, ids out of range, too long)."""


class QueueFull(MuxError):
    """The runtime's bounded queue stayed full past the submit timeout."""


class DeadlineExceeded(MuxError):
    """An instance's deadline passed before it was dispatched."""


class BackendError(MuxError):
    """The inference backend failed on a batch."""


class PrecisionError(MuxError):
    """A typed graph that lost its I/O contract or failed the ONNX checker."""
