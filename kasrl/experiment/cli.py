"""The command line shared by ``train_agent.py``, ``evolve.py`` and ``compete.py``.

Usage::

    python SCRIPT.py [--config FILE] [--resume RUN_DIR] [key=value ...]

``key=value`` overrides any config key with a dotted name (``seed=3``,
``task=digits_cnn``, ``budget.evaluations=20``, ``budget.seconds=600``). With
``--resume`` the run folder's saved config is loaded first, then the overrides
(so a resumed run can be given more budget). Bad input prints one line naming
the key or file and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from kasrl.errors import KasrlError
from kasrl.experiment.config import load_config

__all__ = ["parse_cli", "fail"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message}\n")


def fail(prog: str, error: Exception) -> int:
    """Print one line for ``error`` and return the exit status 2."""
    print(f"{prog}: error: {error}", file=sys.stderr)
    return 2


def parse_cli(cls: type, default_config: str | Path | None, argv: Sequence[str] | None, prog: str, description: str = "") -> tuple:
    """``(config, resume_dir)`` from the command line.

    Raises:
        KasrlError: for an unknown key, a wrong type, a bad file (callers print it with :func:`fail`).
    """
    p = _Parser(prog=prog, description=description)
    p.add_argument("--config", default=None, help=f"YAML config (default {default_config})")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue the run in this folder")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. seed=3 budget.evaluations=20")
    args = p.parse_args(argv)
    path = args.config
    if args.resume is not None:
        saved = Path(args.resume) / "config.yaml"
        if not saved.is_file():
            raise KasrlError(f"`--resume` {args.resume}: not a run folder (no config.yaml)")
        path = saved
    elif path is None:
        path = default_config
    cfg = load_config(cls, path, args.overrides)
    return cfg, args.resume
