"""The multi-fidelity ladder on planted rungs: promotion by bound, stopped rewards, per-rung caching, resume."""

from __future__ import annotations

import math
import random

import pytest

from kasrl.eval.ladder import CAP_BELOW, Ladder, LadderPolicy, RungOutcome
from kasrl.eval.stages import Evaluable
from kasrl.store.memory import MemoryStore
from kasrl.store.records import Status


class _K(Evaluable):
    """A planted kernel: its true final reward and its log speedup (the bound the timing rungs see)."""

    def __init__(self, i: int, final: float, speed: float) -> None:
        self.hash = f"k{i:04d}"
        self.doc = "{}"
        self.final, self.speed = final, speed


class _Rung:
    """A planted rung: ``bound(kernel) -> (bound, noise)`` (the last rung reports the final reward)."""

    def __init__(self, name: str, bound=None, last: bool = False, fail: set | None = None) -> None:
        self.name, self.bound, self.last, self.fail = name, bound, last, fail or set()
        self.seen: list = []

    def run(self, items):
        out = []
        for k, _before in items:
            self.seen.append(k.hash)
            if k.hash in self.fail:
                out.append(RungOutcome(Status.BUILD_ERROR, cause=f"{self.name}: broken on purpose"))
            elif self.last:
                stages = {"train": {"outcome": "ok", "seconds": 3.0}}
                out.append(RungOutcome(Status.OK, {"speedup": math.exp(k.speed), "accuracy": 70.0}, stages, bound=k.final, reward=k.final))
            else:
                b, noise = self.bound(k)
                out.append(RungOutcome(Status.OK, {"speedup": math.exp(k.speed)}, {"time": {"outcome": "ok", "seconds": 0.5}}, bound=b,
                                       noise=noise))
        return out


def _kernels(n: int, seed: int = 0) -> list:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        speed = rng.uniform(-1.5, 0.5)
        final = speed - max(0.0, rng.gauss(0.3, 0.3))  # the accuracy term is never positive: final <= speed
        out.append(_K(i, final, speed))
    return out


def _ladder(store=None, top_k=3, floor=None, fail=None):
    predict = _Rung("predict", lambda k: (k.speed + 0.4, 0.0))  # a loose but true bound
    screen = _Rung("screen", lambda k: (k.speed, 0.05))
    full = _Rung("full", last=True, fail=fail)
    ladder = Ladder([predict, screen, full], LadderPolicy(top_k, floor), "measured", "task", store, {"build_error": -7.0})
    return ladder, (predict, screen, full)


def test_a_kernel_that_could_win_is_never_dropped_and_one_that_cannot_is_never_trained():
    ladder, (predict, screen, full) = _ladder()
    kernels = _kernels(200)
    results = []
    for k in kernels:  # one at a time: the threshold rises as the run goes
        before = ladder.threshold
        (r,) = ladder.evaluate_many([k])
        results.append(r)
        if k.final >= before:  # it would enter the run's top k: it must have been trained
            assert r.status == Status.OK and r.reward == k.final
        if k.speed + 0.4 < before:  # its first bound is already below the threshold: never timed precisely, never trained
            assert k.hash not in screen.seen and k.hash not in full.seen
    best = max(k.final for k in kernels)
    assert max(r.reward for r in results) == best  # the best kernel was found and trained
    assert len(full.seen) < len(kernels) / 2  # most kernels never paid for training


def test_a_stopped_kernels_reward_is_its_bound_capped_below_the_threshold():
    ladder, _ = _ladder(top_k=1)
    good, slow = _K(1, 0.2, 0.3), _K(2, -1.0, -0.8)
    (a,) = ladder.evaluate_many([good])
    (b,) = ladder.evaluate_many([slow])
    assert a.status == Status.OK and ladder.threshold == 0.2
    assert b.status == Status.SCREENED_SLOW and b.reward == pytest.approx(min(-0.8 + 0.4, 0.2 - CAP_BELOW))
    assert b.reward < ladder.threshold and "threshold 0.200" in b.cause and b.metrics["rung"] == 0.0
    assert not b.status.is_ok() and not b.status.is_failure()


def test_failures_keep_their_penalty_and_a_floor_stops_kernels_before_k_finished():
    ladder, (_, _, full) = _ladder(floor=0.0, fail={"k0001"})
    (bad,) = ladder.evaluate_many([_K(1, 0.5, 0.6)])
    assert bad.status == Status.BUILD_ERROR and bad.reward == -7.0
    (slow,) = ladder.evaluate_many([_K(2, -0.9, -0.7)])  # cannot beat the floor (speedup < 1)
    assert slow.status == Status.SCREENED_SLOW and "k0002" not in full.seen


def test_each_rung_is_cached_and_a_later_evaluation_resumes_where_it_stopped():
    store = MemoryStore()
    first, (p1, s1, f1) = _ladder(store, top_k=1)
    champion, hopeful = _K(1, 0.4, 0.5), _K(2, 0.1, 0.2)
    first.evaluate_many([champion])
    (r,) = first.evaluate_many([hopeful])  # below the champion: stopped after the screen
    assert r.status == Status.SCREENED_SLOW and s1.seen == ["k0001", "k0002"] and f1.seen == ["k0001"]
    later, (p2, s2, f2) = _ladder(store, top_k=1)  # a new run: its threshold starts low again
    (r,) = later.evaluate_many([hopeful])
    assert r.status == Status.OK and r.reward == 0.1
    assert p2.seen == [] and s2.seen == [] and f2.seen == ["k0002"]  # only the rung never done before was paid
    rows = store.records()
    assert sorted(rec.fidelity for rec in rows if rec.kernel_hash == "k0002") == ["measured:full", "measured:predict", "measured:screen"]
    other = Ladder(later.rungs, LadderPolicy(1), "measured", "another task fingerprint", store)
    other.evaluate_many([hopeful])
    assert p2.seen == ["k0002"]  # changed settings (another fingerprint) miss


def test_results_carry_every_rungs_seconds_and_the_run_can_be_restored():
    ladder, _ = _ladder(top_k=2)
    results = ladder.evaluate_many(_kernels(6, seed=3))
    finished = [r for r in results if r.status == Status.OK]
    assert finished and all(set(r.stages) == {"predict/time", "screen/time", "full/train"} for r in finished)
    history = [{"status": r.status.label, "reward": r.reward, "m_rung": r.metrics["rung"]} for r in results]
    again, _ = _ladder(top_k=2)
    again.restore(history)
    assert again.threshold == ladder.threshold


def test_kill_9_between_rungs_keeps_every_finished_rung(tmp_path):
    """A process killed while a kernel is being trained loses only that rung: the next run resumes at it."""
    import subprocess
    import sys
    import textwrap

    db = tmp_path / "ladder.db"
    code = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(__import__("pathlib").Path(__file__).resolve().parents[2])!r})
        from tests.eval.test_ladder import _K, _ladder
        from kasrl.store.sqlite import SQLiteStore
        ladder, (_, _, full) = _ladder(SQLiteStore({str(db)!r}))
        full.run = lambda items: os.kill(os.getpid(), signal.SIGKILL)  # the machine goes away mid-training
        ladder.evaluate_many([_K(7, 0.3, 0.4)])
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr
    from kasrl.store.sqlite import SQLiteStore

    with SQLiteStore(db) as store:
        assert sorted(rec.fidelity for rec in store.records()) == ["measured:predict", "measured:screen"]
        ladder, (predict, screen, full) = _ladder(store)
        (res,) = ladder.evaluate_many([_K(7, 0.3, 0.4)])
    assert res.status == Status.OK and predict.seen == [] and screen.seen == [] and full.seen == ["k0007"]
