"""The one exception type of the application layer."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; the CLI prints its one-line message and exits with code 2."""


__all__ = ["UserError"]
