"""A features extractor for the kernel-construction env's graph observation.

The observation (see :class:`envs.kernel_construction.KernelConstructionEnv`) is a
``Dict`` of padded arrays: ``nodes [N, F]``, ``adjacency [N, N]`` (1 where column
``j`` feeds row ``i``), ``node_mask [N]``, ``branches [W, N]`` (one-hot node of each
open branch) and ``budget [6]``. The extractor is a small graph network::

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

import torch as th
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

__all__ = ["GraphFeaturesExtractor"]

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
