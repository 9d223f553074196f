"""Benchmarks, run on demand: `python -m benchmarks.speed`, `python -m benchmarks.rewards`."""
