"""Sizes: budgets, the completability oracle behind the masks, CP-SAT at the finish, exact numerics."""
