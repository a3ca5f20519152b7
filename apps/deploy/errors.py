"""The error the MGCC Deploy application raises for input or a model it refuses (`__main__` turns it into one
`error: ...` line and exit status 2)."""

from __future__ import annotations


class InputError(ValueError):
    """Input the application refuses to process (the message names the file and the problem)."""
