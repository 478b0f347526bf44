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
