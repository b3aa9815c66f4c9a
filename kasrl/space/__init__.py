"""The search space: action table, exact masks, finishing."""

from kasrl.space.config import FAMILIES, Action, ActionTable, SpaceConfig
from kasrl.space.space import SearchSpace

__all__ = ["SearchSpace", "SpaceConfig", "Action", "ActionTable", "FAMILIES"]
