"""Errors that reach the user as one actionable line (exit code 2 in the CLI)."""

from __future__ import annotations


class FlowmapError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do."""


class InputError(FlowmapError):
    """The input (video, image folder, option value) cannot be used as given."""


class DegenerateInputError(FlowmapError):
    """The input decodes fine but cannot give a reconstruction (no parallax, no texture)."""


class NumericalError(FlowmapError):
    """The optimisation diverged or produced an invalid result."""


class OutputError(FlowmapError):
    """An output (file, folder, cache or lock) cannot be written: disk full, permissions,
    a read-only file system or a file size limit."""


def output_error(target: object, exc: OSError) -> OutputError:
    """The one-line :class:`OutputError` of an ``OSError`` raised while writing ``target``.

    Every writer of flowmap goes through :mod:`flowmap.io`, which calls this for any
    ``OSError``, so a full disk never ends in a traceback and the message always says
    what to do.
    """
    reason = exc.strerror or str(exc) or type(exc).__name__
    return OutputError(
        f"cannot write {target}: {reason}; free disk space or choose another output path, "
        "then run the same command again (with --resume the work done so far is reused)"
    )
