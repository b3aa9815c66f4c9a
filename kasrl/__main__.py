"""``python -m kasrl``: see :mod:`kasrl.cli`."""

from kasrl.cli import main

raise SystemExit(main())
