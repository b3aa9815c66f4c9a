"""The random sampler: every draw finishes, and the same seed gives the same kernels."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from agents.random_sampler import RandomSampler
from kasrl.codegen.module import build_module
from kasrl.ir.canonical import kernel_hash
from kasrl.solver.budget import RESNET18_PLACEMENTS
from kasrl.space import SearchSpace


def test_same_seed_same_kernels_and_bad_ranges():
    space = SearchSpace()
    s1, s2 = RandomSampler(space, seed=4), RandomSampler(space, seed=4)
    assert [kernel_hash(s1.ask().kernel) for _ in range(5)] == [kernel_hash(s2.ask().kernel) for _ in range(5)]
    with pytest.raises(ValueError, match="`steps`"):
        RandomSampler(space, steps=(5, 99))


def test_family_first_balances_families():
    """Uniform over actions mostly draws convolutions (81 of ~170 unary templates);
    drawing the family first does not."""
    space = SearchSpace()

    def conv_share(family_first):
        s = RandomSampler(space, seed=2, steps=(8, 8), family_first=family_first)
        counts = [s.ask().kernel.families() for _ in range(15)]
        return sum(c.get("conv", 0) for c in counts) / sum(sum(c.values()) for c in counts)

    assert conv_share(True) < conv_share(False) - 0.15


def test_state_dict_resumes_the_same_stream():
    space = SearchSpace()
    s = RandomSampler(space, seed=9)
    s.ask()
    state = s.state_dict()
    nxt = kernel_hash(s.ask().kernel)
    t = RandomSampler(space, seed=0)
    t.load_state_dict(state)
    assert kernel_hash(t.ask().kernel) == nxt


def test_widths_and_steps_are_respected():
    space = SearchSpace()
    s = RandomSampler(space, seed=1, steps=(6, 6), widths=(2, 2))
    for _ in range(10):
        k, actions = s.sample_actions()
        assert k.steps == 6 and k.peak_width <= 2 and len(actions) == 7


@pytest.mark.slow
def test_thousands_of_rollouts_all_finish_build_and_run_at_every_placement():
    """The payoff of exact masks: 100% of episodes end in a finished kernel that
    solves, builds and runs forward and backward at ResNet-18's four placements."""
    space = SearchSpace(RESNET18_PLACEMENTS)
    finished = 0
    for seed in range(4):
        sampler = RandomSampler(space, seed=seed)
        for k in range(500):
            kernel, _ = sampler.sample_actions()  # would raise on a dead end
            assert kernel.is_finished and kernel.sizes is not None
            finished += 1
            if k % 25:
                continue  # every 25th kernel also runs at every placement
            for p in RESNET18_PLACEMENTS:
                m = build_module(kernel, *p)
                x = torch.randn(1, p.c, p.h, p.w, requires_grad=True)
                y = m(x)
                assert y.shape == x.shape and torch.isfinite(y).all(), "a drawn kernel overflowed on standard-normal input"
                y.sum().backward()
    assert finished == 2000


@pytest.mark.parametrize(
    "args,message",
    [
        (["--n", "-3", "--out", "OUT"], "`--n` must be a positive number"),
        (["--n", "2", "--out", "OUT", "--placements", "64x56"], "'64x56' is not CxHxW"),
        (["--n", "2", "--out", "/proc/forbidden/x"], "`--out` /proc/forbidden/x is not"),
        (["--n", "2", "--out", "OUT", "--steps", "9-3"], "`--steps` must be LOW-HIGH"),
    ],
)
def test_sample_py_bad_arguments(tmp_path, args, message):
    args = [a.replace("OUT", str(tmp_path / "out")) for a in args]
    r = subprocess.run([sys.executable, "sample.py", *args], capture_output=True, text=True)
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_sample_py_writes_json_source_and_picture(tmp_path):
    r = subprocess.run([sys.executable, "sample.py", "--n", "2", "--seed", "3", "--out", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    names = sorted(p.suffix for p in tmp_path.iterdir())
    assert names == [".json", ".json", ".png", ".png", ".py", ".py"]
    assert "FLOPs vs conv" in r.stdout


def test_first_legal_sizes_are_legal_everywhere():
    from kasrl.analysis import analytic_cost

    space = SearchSpace()
    s = RandomSampler(space, seed=12, sizes="feasible")
    for _ in range(15):
        k, _ = s.sample_actions()
        for p, lim in zip(space.placements, space.solver.limits, strict=False):
            for choice in k.sizes.values():
                choice.value(p.c)  # raises when a size is not a positive integer here
            flops, params = analytic_cost(k, p)
            assert flops <= lim.flops and params <= lim.params
        build_module(k, *space.placements[-1])
