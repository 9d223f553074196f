"""Shared fixtures: a tiny Stable Diffusion and a tiny SDXL saved as real pipeline folders, and a tiny run config.

The suite runs in parallel workers (pytest-xdist, `-n auto --dist loadfile` in pyproject.toml, so that a module's
shared fixtures are built once), one torch thread each: on tiny models one thread per process wastes less than two
threads in one process.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from texforce.bases.sd import build_tiny_pipeline, build_tiny_sdxl_pipeline
from texforce.run.run_config import load_config

WORKER = bool(os.environ.get("PYTEST_XDIST_WORKER"))
if WORKER:
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"  # and in the processes the tests start (CLI runs, torchrun, benchmarks)


@pytest.fixture(autouse=True)
def one_thread_per_worker():
    """A test that sets torch's threads (a pre-training's config does) leaves the worker at one again: two threads
    beside another worker's process spin on a shared core and run several times slower."""
    yield
    if WORKER and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32×32-image random-weight pipeline saved with `save_pretrained`, loaded through the real path."""
    folder = tmp_path_factory.mktemp("tiny_sd") / "pipeline"
    build_tiny_pipeline(seed=0, image_size=32).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same for SDXL: two text encoders, pooled embedding and time ids (32×32 images)."""
    folder = tmp_path_factory.mktemp("tiny_sdxl") / "pipeline"
    build_tiny_sdxl_pipeline(seed=0, image_size=32).save_pretrained(folder)
    return folder


def tiny_overrides(model_dir: Path, output_dir: Path, **extra: object) -> list[str]:
    """Overrides that make any run take a second or two on a CPU."""
    values = {
        "model.base": str(model_dir),
        "output_dir": str(output_dir),
        "run_name": "run",
        "train.algorithm": "ddpo",  # the embedded default (backprop on the world's learned reward) made DDPO again
        "sample.eta": 1.0,
        "eval.reward": "null",  # the training reward, not the world's judge
        "prompts.train": "animals",
        "prompts.eval": "null",  # the held-out part of the training set (the default judges the world's headline set)
        "reward": "jpeg_compressibility",
        "sample.num_steps": 4,
        "sample.batch_size_per_device": 4,
        "sample.num_batches_per_epoch": 2,
        "sample.guidance_scale": 5.0,
        "train.batch_size_per_device": 2,
        "train.gradient_accumulation_steps": 2,
        "train.num_epochs": 2,
        "ddpo.timestep_fraction": 0.5,
        "ddpo.clip_range": 0.2,
        "text_lora.learning_rate": 1e-2,
        "advantage.mode": "batch",
        "eval.num_prompts": 2,
        "eval.num_seeds": 1,
        "eval.styles": "[plain]",  # the default also judges engineered prompts
    }
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture
def tiny_config(tiny_model_dir: Path, tmp_path: Path):
    return load_config(None, tiny_overrides(tiny_model_dir, tmp_path / "runs"))
