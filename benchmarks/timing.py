"""What the benchmarks share: wall-clock timing, and their JSON-lines output."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import torch


def _seconds(fn: Callable[[], object], device: torch.device, calls: int) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def timed_calls(fn: Callable[[], object], device: torch.device, repeats: int = 1) -> tuple[float, float]:
    """Seconds of the first call (the warm-up: compilation, autotuning, first allocations) and mean seconds per
    call of `repeats` more, synchronising the GPU."""
    first = _seconds(fn, device, 1)
    return first, _seconds(fn, device, repeats) / repeats


def seconds_of_one_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call, synchronising the GPU (for paired timings that alternate two functions)."""
    return _seconds(fn, device, 1)


def seconds_per_call(fn: Callable[[], object], device: torch.device, repeats: int = 1) -> float:
    """Mean seconds per call after one warm-up call, synchronising the GPU."""
    return timed_calls(fn, device, repeats)[1]


def append_json_lines(path: str | None, records: list[dict]) -> None:
    """Append one JSON object per line to `path` (a benchmark's --json; None: nothing)."""
    if path:
        with open(path, "a") as handle:
            handle.writelines(json.dumps(record) + "\n" for record in records)
