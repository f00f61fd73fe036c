"""User-facing errors.

`FparError` carries a one-line message that names the offending file and says what to do. The CLI catches it,
prints ``error: <message>`` and exits with status 2, so users never see a bare traceback for bad input.
"""

from __future__ import annotations


class FparError(Exception):
    """A problem with the user's input (file, dataset, config) described in one actionable line."""

    exit_code = 2

    def __init__(self, message: str):
        text = str(message)
        # Re-raised from a DataLoader worker, the message is "Caught FparError in DataLoader worker process 0.
        # Original Traceback ...": keep only the original one-line message (its last line).
        if text.startswith("Caught ") and "Original Traceback" in text:
            last = text.rstrip().splitlines()[-1]
            text = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(" ".join(text.split()))  # always one line
