"""The Python API, notebook style: search kernels for your own network, then put the best one into it.

Run from anywhere: ``python examples/notebook_api.py [OUT_DIR]`` (default ``runs/`` in the
repository); ``# %%`` marks cells for editors that run them one at a time. It searches the
task of ``examples/own_network/`` (your network and data, named by import path) with the
analytic fidelity, FLOPs and parameters against a 3x3 conv, which takes seconds; set
``FIDELITY = "measured"`` for real training and latency (about a minute per ten kernels).
"""

# %% The example's network and data are imported by name (examples.own_network.mynet): put the repository on the path.
import copy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # in a notebook: the repository root
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import kasrl  # noqa: E402
from examples.own_network.mynet import tiny_cnn  # noqa: E402

FIDELITY = "analytic"
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "runs"

# %% A study: one task, one strategy, one budget; every evaluation also goes to the shared results store.
study = kasrl.Study(task=str(ROOT / "examples" / "own_network" / "task.yaml"), strategy="random", fidelity=FIDELITY, executor="inline",
                    out=str(OUT), store=str(OUT / "results.db"), budget={"evaluations": 12}, wandb={"mode": "disabled"}, progress=False)

# %% The strategy's own loop for the first 8 evaluations.
study.optimize(evaluations=8)
print(f"after optimize: {len(study.history)} evaluations, best reward {study.best_kernels[0].result.reward:.3f}")

# %% The rest by hand: ask for a kernel, evaluate it (or evaluate it your own way), tell the strategy.
study.run.evaluator.max_evaluations = 12
for _ in range(4):
    proposal = study.ask()  # a finished kernel with solved sizes
    result = study.evaluate(proposal.kernel)  # budgeted, cached in the store
    study.tell(proposal, result)  # the strategy learns from it
    print(f"  {result.kernel_hash[:12]}: reward {result.reward:+.3f}, FLOPs {result.metrics['flops_ratio']:.2f}x a 3x3 conv")

# %% The best kernels, best first; finish() writes them (source, JSON, picture) and the leaderboard to the run folder.
best = study.best_kernels
for rank, record in enumerate(best[:3], 1):
    print(f"#{rank} {record.result.kernel_hash[:16]} reward {record.result.reward:.3f}")
study.finish()

# %% The best kernel in a fresh copy of your model, in place of its shape-preserving 3x3 convs (block1.conv, block2.conv).
model = tiny_cnn(num_classes=10, in_channels=1)
fast = kasrl.apply(copy.deepcopy(model), best[0].doc, input_shape=(1, 16, 16))
print(fast.block1.conv.__class__.__name__, "in block1;", fast.block2.conv.__class__.__name__, "in block2")
x = torch.randn(8, 1, 16, 16)
assert fast(x).shape == model(x).shape == (8, 10)
params = sum(p.numel() for p in fast.parameters()), sum(p.numel() for p in model.parameters())
print(f"parameters: {params[0]:,} with the kernel, {params[1]:,} before")
# The kernel's weights start fresh: train (or fine-tune) `fast` as you trained `model`.
