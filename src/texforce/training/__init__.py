"""What every training step leans on, below the algorithms: atomic checkpoints with kill points and RNG state, and
several processes (gathers, reductions, per-rank batches)."""
