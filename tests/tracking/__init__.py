"""Tests of kasrl.tracking: run names and the wandb tracker."""
