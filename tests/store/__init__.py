"""Tests of kasrl.store: the shared contract on every backend, then SQLite specifics."""
