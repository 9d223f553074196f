"""A training run: its config (shared sections + the algorithm's), its folder and lifecycle (`train`), the `Trainer`
around one algorithm, the adapters' EMA, per-base defaults for the commands, and the gradient diagnostics."""
