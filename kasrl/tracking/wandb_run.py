"""Experiment tracking: a thin wandb wrapper that never touches the network unless asked to.

Metric namespaces (all logged against ``step`` = evaluations done so far):

* ``search/*`` -- the strategy's progress: ``search/best_reward``,
  ``search/best_speedup``, ``search/best_accuracy``, ``search/hypervolume``...
* ``eval/*`` -- the evaluation that just finished: ``eval/reward``,
  ``eval/speedup``, ``eval/latency_ms``, ``eval/accuracy``, ``eval/status``...
* ``budget/evaluations`` -- the step itself, added to every ``log`` call so that
  charts can use it as their x-axis.

Tables (top kernels with their code) and images (graph pictures, the Pareto
scatter) use the same namespaces, e.g. ``search/top_kernels``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["Tracker", "NullTracker", "MODES", "resolve_mode"]

MODES = ("offline", "disabled", "online")
"""The wandb modes a tracker accepts; ``"online"`` is the only one that uses the network."""

T = TypeVar("T", bound="NullTracker")


def resolve_mode(mode: str | None = None) -> str:
    """The wandb mode to run in: ``mode``, else ``$WANDB_MODE``, else ``"offline"``.

    ``"dryrun"`` (wandb's old name) means ``"offline"``.

    Raises:
        ValueError: for any other mode than :data:`MODES`.

    >>> resolve_mode("disabled")
    'disabled'
    """
    chosen = mode if mode is not None else os.environ.get("WANDB_MODE") or "offline"
    chosen = str(chosen).strip().lower()
    if chosen == "dryrun":
        chosen = "offline"
    if chosen not in MODES:
        source = "`mode`" if mode is not None else "$WANDB_MODE"
        raise ValueError(f"{source} {chosen!r} is not a wandb mode; expected one of {list(MODES)}")
    return chosen


def _keep_wandb_off_the_network() -> None:
    """Stop wandb's own telemetry and error reports, which reach for the network even offline.

    wandb 0.31 probes its server for an OpenTelemetry endpoint from a background
    thread and starts ``wandb-core`` with Sentry reporting unless
    ``WANDB_ERROR_REPORTING`` is false; both happen in ``offline`` mode too. This
    sets that variable for the process (before wandb starts its service) and turns
    the telemetry proxy off where this wandb version has one.
    """
    os.environ["WANDB_ERROR_REPORTING"] = "false"
    try:
        from wandb.analytics.opentelemetry import opentelemetry_proxy
    except ImportError:  # another wandb version: nothing to turn off here
        return
    disable = getattr(opentelemetry_proxy, "disable", None)
    if callable(disable):
        disable()


class NullTracker:
    """A tracker that records nothing; the API every tracker offers.

    ``start(project, name, group=None, config=None, dir=".", mode=None)``
        Classmethod: a started tracker (here, one that drops everything).
    ``log(metrics, step)``
        Scalars for the evaluation count ``step`` (must not decrease).
    ``log_table(key, columns, rows, step=None)``
        A table, e.g. the top kernels with their code.
    ``log_image(key, path, caption="", step=None)``
        An image file, e.g. a kernel's graph or the Pareto scatter.
    ``summary(values)``
        Final or best values shown on the run's overview.
    ``finish(exit_code=0)``
        Ends the run; also done on leaving a ``with`` block.

    Arguments are checked the same way as in :class:`Tracker`, so a test that
    runs with a ``NullTracker`` catches the mistakes a real run would hit.

    >>> with NullTracker() as t:
    ...     t.log({"eval/reward": 0.5}, step=1)
    """

    mode = "disabled"
    """The wandb mode this tracker runs in."""

    def __init__(self) -> None:
        self._step: int | None = None
        self._finished = False

    @property
    def run_dir(self) -> Path | None:
        """Where the run's files are (None: this tracker writes nothing)."""
        return None

    @classmethod
    def start(
        cls: type[T],
        project: str,
        name: str,
        group: str | None = None,
        config: Mapping[str, Any] | None = None,
        dir: str | Path = ".",
        mode: str | None = None,
    ) -> T:
        """A started tracker; the arguments are those of :meth:`Tracker.start` and are ignored here."""
        return cls()

    # -- public API: check, then hand to the hook ----------------------------------

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log scalar metrics at ``step`` evaluations done.

        Args:
            metrics: namespaced key -> number, e.g. ``{"eval/reward": 0.3}``.
            step: evaluations done so far; never smaller than in an earlier call.

        Raises:
            ValueError: on a bad key, a non-number value or a decreasing step.
        """
        step = self._check_step(step)
        if not isinstance(metrics, Mapping):
            raise ValueError(f"`metrics` must be a dict, got {type(metrics).__name__}")
        values: dict[str, Any] = {}
        for key, value in metrics.items():
            self._check_key(key)
            if isinstance(value, bool):
                value = int(value)
            if not isinstance(value, (int, float)):
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    raise ValueError(f"`metrics[{key!r}]` must be a number, got {type(value).__name__}") from None
            values[key] = value
        values.setdefault("budget/evaluations", step)
        self._step = step
        self._log(values, step)

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], step: int | None = None) -> None:
        """Log a table, e.g. ``search/top_kernels`` with each kernel's reward and code.

        Args:
            key: namespaced name of the table.
            columns: column names.
            rows: one sequence per row, as long as ``columns``.
            step: evaluations done; the last logged step when ``None``.

        Raises:
            ValueError: on a bad key, or a row whose length differs from ``columns``.
        """
        self._check_key(key)
        columns = [str(c) for c in columns]
        rows = [list(r) for r in rows]
        for i, row in enumerate(rows):
            if len(row) != len(columns):
                raise ValueError(f"`rows[{i}]` has {len(row)} values for {len(columns)} columns {columns}")
        self._log_table(key, columns, rows, self._media_step(step))

    def log_image(self, key: str, path: str | Path, caption: str = "", step: int | None = None) -> None:
        """Log an image file, e.g. ``search/pareto`` or ``search/best_graph``.

        Args:
            key: namespaced name of the image.
            path: a PNG or JPEG file.
            caption: shown under the image.
            step: evaluations done; the last logged step when ``None``.

        Raises:
            ValueError: on a bad key.
            FileNotFoundError: when ``path`` is not a file.
        """
        self._check_key(key)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"image `{path}` for `{key}` does not exist")
        self._log_image(key, path, str(caption), self._media_step(step))

    def summary(self, values: Mapping[str, Any]) -> None:
        """Set run summary values (best reward, final counts...); later calls overwrite keys."""
        if not isinstance(values, Mapping):
            raise ValueError(f"`values` must be a dict, got {type(values).__name__}")
        for key in values:
            self._check_key(key)
        self._summary(dict(values))

    def finish(self, exit_code: int = 0) -> None:
        """End the run; calling it again does nothing."""
        if self._finished:
            return
        self._finished = True
        self._finish(exit_code)

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.finish(exit_code=0 if exc_type is None else 1)

    # -- checks ------------------------------------------------------------------

    def _check_key(self, key: object) -> None:
        if self._finished:
            raise RuntimeError("the tracker is finished; start a new one")
        if not isinstance(key, str) or not key or key.startswith("/") or key.endswith("/"):
            raise ValueError(f"metric key {key!r} must be a non-empty name like 'eval/reward'")

    def _check_step(self, step: object) -> int:
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"`step` must be the number of evaluations done (an integer >= 0), got {step!r}")
        if self._step is not None and step < self._step:
            raise ValueError(f"`step` {step} is below the last logged step {self._step}; steps must not decrease")
        return step

    def _media_step(self, step: int | None) -> int:
        if step is None:
            return 0 if self._step is None else self._step
        step = self._check_step(step)
        self._step = step
        return step

    # -- hooks: a NullTracker drops everything --------------------------------------

    def _log(self, values: dict[str, Any], step: int) -> None:
        pass

    def _log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        pass

    def _log_image(self, key: str, path: Path, caption: str, step: int) -> None:
        pass

    def _summary(self, values: dict[str, Any]) -> None:
        pass

    def _finish(self, exit_code: int) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Tracker(NullTracker):
    """A wandb run, offline unless told otherwise; see :class:`NullTracker` for the API.

    ``wandb`` is imported only when a run starts. The mode is ``offline`` by
    default (a run folder ``{dir}/wandb/offline-run-*`` that ``wandb sync`` can
    upload later, by hand, from a machine with network), ``disabled`` to record
    nothing and write no files (tests), or ``online`` when explicitly asked for.
    The tracker itself never syncs, never logs in, and starts wandb silent, without
    console capture and without the system-stats sampler (a background thread that
    would disturb latency measurements on a small machine). Outside ``online``
    mode it also sets ``WANDB_ERROR_REPORTING=false`` for the process and turns
    wandb's telemetry off, since both contact wandb's servers even when offline.

    >>> with Tracker.start("kasrl", "digits__random__0__0", config={"seed": 0}, mode="disabled") as t:
    ...     t.log({"eval/reward": 0.5, "search/best_reward": 0.5}, step=1)
    """

    def __init__(self, run: Any, mode: str) -> None:
        super().__init__()
        self._run = run
        self.mode = mode

    @classmethod
    def start(
        cls,
        project: str,
        name: str,
        group: str | None = None,
        config: Mapping[str, Any] | None = None,
        dir: str | Path = ".",
        mode: str | None = None,
    ) -> Tracker:
        """Start a wandb run and return its tracker.

        Args:
            project: the wandb project, e.g. ``"kasrl"``.
            name: the run's display name (``kasrl.tracking.run_name``); wandb picks
                the run id, so reusing a name never overwrites an earlier run.
            group: groups runs in the wandb UI, e.g. one competition.
            config: the run's config, e.g. ``dataclasses.asdict(cfg)``.
            dir: the folder under which wandb writes ``wandb/``; created if missing.
            mode: ``"offline"``, ``"disabled"`` or ``"online"``; ``None`` reads
                ``$WANDB_MODE`` and falls back to ``"offline"``.

        Raises:
            ValueError: on an unknown mode or an empty project or name.
        """
        mode = resolve_mode(mode)
        for arg, value in (("project", project), ("name", name)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"`{arg}` must be a non-empty string, got {value!r}")
        folder = Path(dir)
        # wandb mistakes the project's `agents` package for OpenAI's and prints an ad for Weave
        os.environ.setdefault("WANDB_DISABLE_WEAVE", "true")
        if mode != "disabled":
            folder.mkdir(parents=True, exist_ok=True)
        if mode != "online":
            _keep_wandb_off_the_network()
        import wandb  # lazy: importing wandb costs about a second

        options: dict[str, Any] = {"silent": True, "console": "off", "x_disable_stats": True}
        if mode == "online":
            options["login_timeout"] = 30.0
        run = wandb.init(
            project=project,
            name=name,
            group=group,
            config=dict(config or {}),
            dir=None if mode == "disabled" else str(folder),  # a dir would be created even when disabled
            mode=mode,
            reinit="create_new",
            settings=wandb.Settings(**options),
        )
        return cls(run, mode)

    @property
    def run_dir(self) -> Path | None:
        """The run's folder (``.../wandb/offline-run-*``), or ``None`` when disabled."""
        if self.mode == "disabled":
            return None
        return Path(self._run.dir).parent

    def _log(self, values: dict[str, Any], step: int) -> None:
        self._run.log(values, step=step)

    def _log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        import wandb

        self._run.log({key: wandb.Table(columns=columns, data=rows)}, step=step)

    def _log_image(self, key: str, path: Path, caption: str, step: int) -> None:
        import wandb

        self._run.log({key: wandb.Image(str(path), caption=caption or None)}, step=step)

    def _summary(self, values: dict[str, Any]) -> None:
        self._run.summary.update(values)

    def _finish(self, exit_code: int) -> None:
        self._run.finish(exit_code=exit_code)

    def __repr__(self) -> str:
        return f"Tracker(name={getattr(self._run, 'name', None)!r}, mode={self.mode!r})"
