"""Search agents over the kernel-construction environment: PPO, its untrained prior, MCTS and the random samplers."""
