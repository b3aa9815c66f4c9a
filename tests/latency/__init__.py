"""Tests of the calibrated latency model (kasrl.latency)."""
