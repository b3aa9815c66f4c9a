"""Export a run's best kernels for use outside kasrl: ``python -m kasrl export RUN_DIR --top K [--out DIR]``.

For each kernel, best first, ``kernel<rank>_<id>.py`` (standalone PyTorch: one
``class Kernel(nn.Module)`` importing only torch), ``.json`` (the versioned
document :func:`kasrl.apply` and ``python -m kasrl show`` read) and ``.png`` (its
graph), plus a ``README.md`` with the table of figures and how to use them.
The kernels come from the run's checkpoint (``checkpoint.pkl``: every finished
or interrupted run has one once a kernel ran).
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

from kasrl.errors import ConfigError, KasrlError

__all__ = ["export_run", "run_records"]


def run_records(run_dir: str | Path) -> tuple[Any, list]:
    """``(run config, best records)`` of a run folder, best first.

    Raises:
        ConfigError: when ``run_dir`` is not a run folder or no kernel ran in it.
    """
    from kasrl.experiment.budget import TopKernels
    from kasrl.experiment.config import load_saved

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir}: not a run folder (no config.yaml)")
    cfg = load_saved(run_dir)
    ckpt = run_dir / "checkpoint.pkl"
    if not ckpt.is_file():
        raise ConfigError(f"{run_dir}: no checkpoint.pkl (the run never evaluated a kernel)")
    with open(ckpt, "rb") as f:
        state = pickle.load(f)  # noqa: S301 - the run's own checkpoint
    board = TopKernels(max(1, int(state["top"]["k"])))
    board.load_state_dict(state["top"])
    return cfg, board.best()


def _fmt(value: Any, unit: str) -> str:
    return f"{value:.3f}{unit}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def _task_shapes(cfg: Any) -> tuple[str, str]:
    """The task's placements and input shape, in words (empty when the task does not load here)."""
    from kasrl.eval.task_space import task_search_setup
    from kasrl.tasks import load_task, task_input_shape

    try:
        task = load_task(cfg.task, overrides=cfg.task_overrides, check_paths=False)
        placements, _, _ = task_search_setup(task, latency=False)
        return ", ".join(map(str, placements)), ", ".join(map(str, task_input_shape(task)))
    except (KasrlError, OSError):
        return "", ""


def export_run(run_dir: str | Path, top: int | None = None, out: str | Path | None = None) -> list:
    """Write the run's ``top`` best kernels (all it kept when None) and a usage note to ``out`` (default ``RUN_DIR/export``).

    Returns:
        The paths written.

    Raises:
        ConfigError: for a folder that is not a run, a run with no kernel, or ``top`` below 1.
    """
    from kasrl.codegen.draw import draw_kernel
    from kasrl.codegen.source import kernel_source
    from kasrl.ir.serialize import loads, save_kernel

    if top is not None and top < 1:
        raise ConfigError(f"`--top` must be at least 1, got {top}")
    run_dir = Path(run_dir)
    cfg, records = run_records(run_dir)
    if not records:
        raise ConfigError(f"{run_dir}: no kernel of this run succeeded, so there is nothing to export")
    records = records[:top] if top is not None else records
    out = Path(out) if out is not None else run_dir / "export"
    out.mkdir(parents=True, exist_ok=True)
    placements, shape = _task_shapes(cfg)
    written: list = []
    rows = []
    for rank, rec in enumerate(records, 1):
        graph = loads(rec.doc, f"{run_dir.name} kernel {rank}")
        r, m = rec.result, rec.result.metrics
        sid = r.kernel_hash[:16]
        stem = f"kernel{rank}_{sid}"
        figures = {"reward": r.reward, **{k: m[k] for k in ("speedup", "accuracy", "flops_ratio", "params_ratio") if k in m}}
        meta = {"run": run_dir.name, "task": cfg.task, "rank": rank, **figures}
        written.append(save_kernel(graph, out / f"{stem}.json", meta=meta))
        doc = f"kasrl kernel {sid} (rank {rank} of run {run_dir.name}, task {cfg.task}): reward {r.reward:.3f}"
        (out / f"{stem}.py").write_text(kernel_source(graph, doc=doc))
        written.append(out / f"{stem}.py")
        written.append(draw_kernel(graph, out / f"{stem}.png", f"#{rank} {sid} reward {r.reward:.3f}"))
        rows.append(f"| {rank} | `{stem}` | {r.reward:.3f} | {_fmt(m.get('speedup'), 'x')} | {_fmt(m.get('accuracy'), '%')} | "
                    f"{_fmt(m.get('flops_ratio'), 'x')} | {_fmt(m.get('params_ratio'), 'x')} |")
    first = f"kernel1_{records[0].result.kernel_hash[:16]}"
    searched = f" at {placements}" if placements else ""
    readme = f"""# Kernels of run {run_dir.name}

Task `{cfg.task}` ({cfg.fidelity} fidelity), searched{searched}; best first. Each kernel
replaces a shape-preserving 3x3 convolution (stride 1, C in = C out, groups 1).

| rank | kernel | reward | speedup | accuracy | FLOPs vs conv | params vs conv |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Files per kernel: `.py` (standalone PyTorch), `.json` (the kernel document), `.png` (its graph).

## In your model, with kasrl

```python
import copy
import kasrl

fast = kasrl.apply(copy.deepcopy(model), "{first}.json", input_shape=({shape or "C, H, W"}))
```

`kasrl.apply` puts the kernel in place of every shape-preserving 3x3 convolution of
`model` (or those `select=` names: `select=["layer*.conv2"]`, `select=[{{"channels": [64]}}]`),
built for the `(C, H, W)` each layer sees. Where the kernel's stored sizes do not fit
those shapes it re-solves its free sizes there (same graph, other sizes), or says in
one line that no legal sizes exist. The new layers start from fresh weights: train or
fine-tune the model afterwards. `python -m kasrl show {first}.json --shape CxHxW` prints
its source and cost at another shape.

## Without kasrl

`{first}.py` imports only torch:

```python
from {first} import Kernel

block.conv = Kernel(c, h, w)   # in place of nn.Conv2d(c, c, 3, padding=1, bias=False)
```

`Kernel(c, h, w)` maps `[N, c, h, w]` to `[N, c, h, w]`. Its free sizes are fixed ratios
of `c` (or constants), chosen for the shapes above; at a `c` they do not divide it raises
`ValueError` naming the size: use `kasrl.apply` (or `python -m kasrl show KERNEL.json
--shape CxHxW`) to re-solve them there.
"""
    (out / "README.md").write_text(readme)
    written.append(out / "README.md")
    return written
