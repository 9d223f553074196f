"""How good is a gradient estimate? Size batches before spending GPU hours.

`gradient_snr` computes the training algorithm's gradient of the same starting policy from several independent
batches (the epoch loop's own sampling, rewards and advantages; no optimizer step) and measures how well they
agree. For an unbiased estimate g + ε of n samples, E[cos(ĝ₁, ĝ₂)] ≈ |g|² / (|g|² + tr Σ / n): the squared
signal-to-noise ratio of one batch is SNR²ₙ = cos / (1 − cos), of one sample SNR²₁ = SNR²ₙ / n, and a batch gives a
gradient whose direction agrees with the truth to cosine ≈ 0.7 (SNR² = 1) from n / SNR²ₙ samples on.
"""

from __future__ import annotations

import itertools
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from texforce.algorithms import build_algorithm
from texforce.observe.runlog import RunLogger
from texforce.run.run_config import RunConfig
from texforce.run.trainer import Trainer, epoch_generator
from texforce.stats import estimate

Log = Callable[[str], None]


def one_step_per_batch(config: RunConfig) -> RunConfig:
    """The same config with one optimizer step per epoch over the whole batch (and one PPO pass), so each
    epoch yields exactly one gradient of all its samples."""
    micro_batches = config.samples_per_epoch_per_device // config.train.batch_size_per_device
    config.train.gradient_accumulation_steps = micro_batches
    config.ddpo.num_inner_epochs = 1
    return config


def gradient_snr(config: RunConfig, num_batches: int = 4, log: Log = print) -> dict[str, Any]:
    """Gradients of `num_batches` independent batches at the initial policy; their pairwise cosines and the
    implied signal-to-noise ratios. The algorithm's state (e.g. per-prompt statistics) starts fresh each batch."""
    if num_batches < 2:
        raise ValueError("need at least two batches to compare")
    config = one_step_per_batch(config)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, RunLogger(Path(tmp), num_batches, 1, quiet=True))
        trainer.setup()
        gradients: list[torch.Tensor] = []

        def capture() -> float:
            flat = torch.cat(
                [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in trainer.trainable]
            )
            gradients.append(flat.detach().double().cpu())
            trainer.optimizer.zero_grad(set_to_none=True)
            return float(flat.norm())

        trainer.optimizer_step = capture  # record instead of stepping: every batch sees the same policy
        started = time.perf_counter()
        for batch in range(num_batches):
            trainer.algorithm = build_algorithm(config.train.algorithm, trainer)
            trainer.epoch = batch + 1
            trainer.algorithm.run_epoch(batch, epoch_generator(config.seed + 7919, batch))
            seconds = time.perf_counter() - started
            log(f"batch {batch + 1}/{num_batches}: |g| {gradients[-1].norm():.3e} ({seconds:.0f}s)")
    cosines = [
        float(torch.nn.functional.cosine_similarity(a, b, dim=0)) for a, b in itertools.combinations(gradients, 2)
    ]
    mean_cosine = estimate(cosines)
    samples = config.samples_per_epoch_per_device
    snr2_batch = mean_cosine.mean / (1 - mean_cosine.mean) if 0 < mean_cosine.mean < 1 else float("nan")
    return {
        "algorithm": config.train.algorithm,
        "reward": config.reward,
        "advantage": config.advantage.mode if config.train.algorithm == "ddpo" else None,
        "samples_per_batch": samples,
        "num_batches": num_batches,
        "cosines": [round(c, 4) for c in cosines],
        "mean_cosine": round(mean_cosine.mean, 4),
        "mean_cosine_ci95": round(mean_cosine.ci, 4),
        "snr2_per_batch": snr2_batch,
        "snr2_per_sample": snr2_batch / samples,
        "samples_for_snr2_1": samples / snr2_batch if snr2_batch > 0 else math.inf,
        "seconds": round(time.perf_counter() - started, 1),
    }
