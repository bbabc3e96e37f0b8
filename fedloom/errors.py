"""The one exception root of fedloom.

Every error fedloom raises on purpose is a ``FedloomError`` (or a subclass that also
derives from the matching builtin, so ``except ValueError`` keeps working). Messages
say what was wrong, what was expected and how to fix it.
"""

from __future__ import annotations

__all__ = ["FedloomError", "ConfigError", "DataError", "UpdateRejected", "InsufficientUpdates"]


class FedloomError(Exception):
    """Root of all errors raised by fedloom."""


class ConfigError(FedloomError, ValueError):
    """A setting has a value fedloom cannot run with (raised before training)."""


class DataError(FedloomError, ValueError):
    """A dataset cannot be loaded or split as asked."""


class UpdateRejected(FedloomError, ValueError):
    """A client update failed validation; ``reason`` is a short machine-readable tag."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class InsufficientUpdates(FedloomError, ValueError):
    """Too few valid updates are left for a rule to run; the round keeps the old model."""
