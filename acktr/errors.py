"""The exception types of the application layer."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; the CLI prints its one-line message and exits with code 2."""


class NonFiniteEnvError(UserError, ValueError):
    """An environment returned a NaN/inf observation or reward, or was sent a NaN/inf action (one line)."""


__all__ = ["NonFiniteEnvError", "UserError"]
