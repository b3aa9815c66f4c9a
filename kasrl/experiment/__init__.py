"""Search runs: configs, one run's plumbing, budgets, and competition statistics and reports."""
