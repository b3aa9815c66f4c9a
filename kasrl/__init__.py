"""kasrl: Kernel Architecture Search with exact masks, CP-SAT sizes and a measured reward.

The Python API (imported on first use, so ``import kasrl`` stays light):

* :class:`kasrl.Study` -- search a task with a strategy (``optimize``, or ``ask`` / ``evaluate`` / ``tell``);
* :func:`kasrl.apply` -- put a kernel into your own model in place of its 3x3 convolutions.
"""

from __future__ import annotations

__all__ = ["Study", "apply"]


def __getattr__(name: str):
    if name == "Study":
        from kasrl.study import Study

        return Study
    if name == "apply":
        from kasrl.placeholders import apply

        return apply
    raise AttributeError(f"module 'kasrl' has no attribute {name!r}")
