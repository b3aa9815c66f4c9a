"""Tests of the task layer: configs, networks and data."""
