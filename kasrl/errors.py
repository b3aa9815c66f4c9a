"""The exceptions kasrl raises.

Every error a user can cause is one of these, with a one-line message that
names the field, file or action at fault and what is wrong with it.
"""

from __future__ import annotations

__all__ = [
    "KasrlError",
    "IllegalAction",
    "ShapeMismatch",
    "KernelDocumentError",
    "SchemaVersionError",
    "SolverInfeasible",
    "ConfigError",
    "DatasetError",
]


class KasrlError(Exception):
    """Raised when kasrl rejects an input; the base of every kasrl error."""


class IllegalAction(KasrlError):
    """Raised when an action is applied that the current state does not allow."""


class ShapeMismatch(KasrlError):
    """Raised when tensor shapes do not line up for a primitive or a document."""


class KernelDocumentError(KasrlError):
    """Raised when a kernel JSON document is malformed, hostile or inconsistent."""


class SchemaVersionError(KernelDocumentError):
    """Raised when a document carries a schema version this kasrl cannot read."""


class SolverInfeasible(KasrlError):
    """Raised when no sizes satisfy every constraint at every placement.

    Attributes:
        placement: the ``(C, H, W)`` at which the failing constraint was found,
            or ``None`` when the placements only conflict with each other.
        constraint: which constraint fails (``"flops"``, ``"params"``,
            ``"memory"``, ``"integrality"``, ``"equality"`` or ``"placements"``).
    """

    def __init__(self, message: str, placement: tuple | None = None, constraint: str = "") -> None:
        super().__init__(message)
        self.placement = placement
        self.constraint = constraint


class ConfigError(KasrlError):
    """Raised when a config file or override has an unknown key or a bad value."""


class DatasetError(KasrlError):
    """Raised when a dataset cannot be found or read."""
