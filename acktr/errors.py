"""The exception types of the application layer."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; the CLI prints its one-line message and exits with code 2."""


class NonFiniteEnvError(UserError, ValueError):
    """An environment returned a NaN/inf observation or reward, or was sent a NaN/inf action (one line)."""


class RolloutSizeError(UserError, ValueError, AssertionError):
    """The rollout is too small for what was asked of it (one line). Also an ``AssertionError``: SB3's PPO and
    sb3-contrib's TRPO assert the same condition, so code written against them catches it unchanged."""


__all__ = ["NonFiniteEnvError", "RolloutSizeError", "UserError"]
