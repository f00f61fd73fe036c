"""User-facing errors.

`FparError` carries a one-line message that names the offending file and says what to do. The CLI catches it,
prints ``error: <message>`` and exits with status 2, so users never see a bare traceback for bad input.
"""

from __future__ import annotations


class FparError(Exception):
    """A problem with the user's input (file, dataset, config) described in one actionable line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line
