"""Experiment tracking: the shared run name and a lazy, offline-first wandb tracker."""

from kasrl.tracking.naming import parse_run_name, run_name
from kasrl.tracking.wandb_run import MODES, NullTracker, Tracker, resolve_mode

__all__ = ["run_name", "parse_run_name", "Tracker", "NullTracker", "MODES", "resolve_mode"]
