"""Gymnasium environments of kasrl (registered on import).

``gymnasium.make("kasrl/KernelConstruction-v0", ...)`` builds a
:class:`~envs.kernel_construction.KernelConstructionEnv`.
"""

import gymnasium as gym

from envs.kernel_construction import KernelConstructionEnv, MaskedDiscrete

ENV_ID = "kasrl/KernelConstruction-v0"

if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="envs.kernel_construction:KernelConstructionEnv", disable_env_checker=True)

__all__ = ["ENV_ID", "KernelConstructionEnv", "MaskedDiscrete"]
