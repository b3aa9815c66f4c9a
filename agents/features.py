"""The graph policy's networks: a features extractor for the graph observation and a factored action head.

The observation (see :class:`envs.kernel_construction.KernelConstructionEnv`) is a
``Dict`` of padded arrays: ``nodes [N, F]``, ``adjacency [N, N]`` (1 where column
``j`` feeds row ``i``), ``node_mask [N]``, ``branches [W, N]`` (one-hot node of each
open branch) and ``budget [7]``. The extractor is a small graph network::

    h = relu(embed(nodes))                                  # [N, H]
    repeat rounds:                                          # message passing
        from_inputs = mean of h over each node's inputs     # adjacency rows
        from_users  = mean of h over each node's users      # adjacency columns
        h = h + relu(update([h, from_inputs, from_users]))  # residual, padded nodes zeroed
    pooled = attention pooling of h over real nodes         # [H]
    open   = branches @ h                                   # [W, H]: what each action operand reads
    features = [pooled, open (flattened), open-branch flags, budget]

The action table is laid out per operand branch (``template x branch``), so the
branch embeddings, in branch order, are what the policy's action head needs.

>>> import gymnasium as gym, envs, torch
>>> env = gym.make("kasrl/KernelConstruction-v0", max_steps=6)
>>> obs, _ = env.reset(seed=0)
>>> fx = GraphFeaturesExtractor(env.observation_space, hidden=16)
>>> batch = {k: torch.as_tensor(v)[None] for k, v in obs.items()}
>>> tuple(fx(batch).shape) == (1, fx.features_dim)
True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

__all__ = ["GraphFeaturesExtractor", "FactoredActionHead", "action_index"]

_KEYS = ("nodes", "adjacency", "node_mask", "branches", "budget")


class GraphFeaturesExtractor(BaseFeaturesExtractor):
    """Message passing over the kernel graph, attention pooling, branch embeddings, budget.

    Args:
        observation_space: the env's ``Dict`` observation space.
        hidden: width of the node embeddings (units).
        rounds: message-passing rounds (each reaches one more hop up and down the graph).

    Raises:
        ValueError: when the observation space lacks one of the env's keys.
    """

    def __init__(self, observation_space: spaces.Dict, hidden: int = 64, rounds: int = 2) -> None:
        missing = [k for k in _KEYS if k not in getattr(observation_space, "spaces", {})]
        if missing:
            raise ValueError(f"`observation_space` lacks {missing}; GraphFeaturesExtractor needs the keys {list(_KEYS)}")
        if hidden < 1 or rounds < 0:
            raise ValueError(f"`hidden` must be >= 1 and `rounds` >= 0, got hidden={hidden}, rounds={rounds}")
        n_features = observation_space["nodes"].shape[-1]
        width = observation_space["branches"].shape[0]
        n_budget = observation_space["budget"].shape[0]
        super().__init__(observation_space, features_dim=hidden + width * hidden + width + n_budget)
        self.hidden = hidden
        self.embed = nn.Linear(n_features, hidden)
        self.updates = nn.ModuleList(nn.Linear(3 * hidden, hidden) for _ in range(rounds))
        self.score = nn.Linear(hidden, 1)

    def forward(self, observations: dict) -> th.Tensor:
        """Features ``[B, features_dim]`` from a batch of observations."""
        nodes, adj, mask = observations["nodes"], observations["adjacency"], observations["node_mask"]
        branches, budget = observations["branches"], observations["budget"]
        keep = mask.unsqueeze(-1)  # [B, N, 1]
        h = th.relu(self.embed(nodes)) * keep
        in_deg = adj.sum(-1, keepdim=True).clamp(min=1.0)  # inputs per node
        out_deg = adj.sum(-2).unsqueeze(-1).clamp(min=1.0)  # users per node
        adj_t = adj.transpose(-1, -2)
        for update in self.updates:
            from_inputs = th.bmm(adj, h) / in_deg
            from_users = th.bmm(adj_t, h) / out_deg
            h = (h + th.relu(update(th.cat([h, from_inputs, from_users], dim=-1)))) * keep
        scores = self.score(h).squeeze(-1).masked_fill(mask <= 0, -1e9)
        weights = th.softmax(scores, dim=-1) * mask  # all-padding rows (never from the env) pool to zero
        pooled = th.bmm(weights.unsqueeze(1), h).squeeze(1)
        open_branches = th.bmm(branches, h)  # [B, W, H]
        flags = branches.sum(-1)  # [B, W]: 1 for an open branch
        return th.cat([pooled, open_branches.flatten(1), flags, budget], dim=-1)


def action_index(space: Any) -> np.ndarray:
    """What each action of ``space``'s table is made of: ``[n_actions, 4]`` int64 codes.

    Columns: family, template (the primitive with its attributes), first operand
    branch, second operand branch (``-1`` where an action has none). Finish and
    fork are families of their own; fork's branch is its first operand.
    """
    families: dict = {}
    templates: dict = {}
    rows = []
    for act in space.table.actions:
        fam = families.setdefault(act.family, len(families))
        name = act.kind if act.prim is None else act.prim.label()
        tmpl = templates.setdefault((act.kind, name), len(templates))
        ops = list(act.operands[:2]) + [-1] * (2 - len(act.operands[:2]))
        rows.append([fam, tmpl, *ops])
    return np.asarray(rows, dtype=np.int64)


class FactoredActionHead(nn.Module):
    """Action logits that share what actions have in common (their family, template and operands).

    ``logits = flat(latent) + latent . (E_family[a] + E_template[a] + E_op1[a] + E_op2[a])``.
    The flat part is the usual per-action linear head; the shared part lets one
    episode's outcome move every action of the same family or template at once
    (the table has thousands of actions: a convolution template on each branch
    is a separate action), which is what makes learning from a few hundred
    episodes possible. Both parts start near zero and the flat part's bias at
    ``-log(actions in the family)``, so the first policy draws a family
    uniformly, then one of its actions: the random sampler's ``family_first``
    prior. (Uniform over actions would pick a convolution almost every step and
    "finish" almost never: deep, slow kernels that do not train.)

    Args:
        latent_dim: width of the policy's latent vector (units).
        index: :func:`action_index` of the env's search space.
    """

    def __init__(self, latent_dim: int, index: np.ndarray) -> None:
        super().__init__()
        index = th.as_tensor(np.asarray(index), dtype=th.long)
        if index.ndim != 2 or index.shape[1] != 4:
            raise ValueError(f"`index` must be [n_actions, 4] codes from action_index(), got shape {tuple(index.shape)}")
        self.register_buffer("index", index + 1, persistent=False)  # 0: no operand
        self.flat = nn.Linear(latent_dim, index.shape[0])
        nn.init.orthogonal_(self.flat.weight, gain=0.01)  # as SB3 initialises its action head
        family = index[:, 0]
        per_family = th.bincount(family).to(th.float32)
        with th.no_grad():
            self.flat.bias.copy_(-th.log(per_family[family]))  # uniform over families, then within one
        sizes = [int(index[:, k].max()) + 2 for k in range(4)]
        self.parts = nn.ModuleList(nn.Embedding(n, latent_dim) for n in sizes)
        for emb in self.parts:
            nn.init.normal_(emb.weight, std=0.01)

    def forward(self, latent: th.Tensor) -> th.Tensor:
        """Logits ``[B, n_actions]`` from the policy's latent ``[B, latent_dim]``."""
        actions = sum(emb(self.index[:, k]) for k, emb in enumerate(self.parts))  # [n_actions, latent_dim]
        return self.flat(latent) + latent @ actions.T
