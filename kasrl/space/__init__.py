"""The search space: action table, exact masks, finishing, and the search states they act on."""

from kasrl.space.config import FAMILIES, Action, ActionTable, SpaceConfig
from kasrl.space.space import SearchSpace
from kasrl.space.state import SearchState

__all__ = ["SearchSpace", "SearchState", "SpaceConfig", "Action", "ActionTable", "FAMILIES"]
