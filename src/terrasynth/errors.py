"""User-facing errors.

A :class:`UserError` is something the user caused and can fix (a bad path, an unknown
class code, a typo in a config key). The CLI prints its message as one line and exits
with code 2. Internal bugs are ordinary exceptions and keep their traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user can act on: the message names the file, the value and the fix."""

    exit_code = 2

    def __init__(self, message: str):
        # Keep it one line: the CLI contract is a single line on stderr.
        super().__init__(" ".join(str(message).split()))
