"""The GPU suite's planner (`python -m benchmarks.gpu_suite`): each arm's batch shape, the throughput measured at the
start of the run, and the largest budget of epochs, seeds and experiments whose predicted seconds fit the deadline.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from texforce.experiments.harness import (
    Budget,
)

FINAL_RESERVE = 10.0  # seconds kept at the end: collecting the figures, results.json and the pages
SAFETY = 1.15  # the plan fits its predicted seconds times this into the time left
RUN_EVAL_SETUPS = 4  # a run's own before/after evaluation renders about as much as 4 configurations of `evaluate`
CALIBRATION_CONFIG = "world_text"


@dataclass(frozen=True)
class Shape:
    """Every arm's batch shape and the judging budget: what the plan keeps while it sizes epochs and seeds."""

    samples_per_epoch: int = 1024
    sample_batch: int = 512
    samples_per_step: int = 256
    micro_batch: int = 256
    target_epochs: int = 25  # 25,600 samples per arm: DDPO's budget
    min_epochs: int = 12  # fewer epochs than the target down to this (about half), then other things go
    eval_prompts: int = 32
    eval_seeds: int = 4
    eval_steps: int = 20
    extra: tuple[str, ...] = ()  # overrides of every run (the smoke shape's sampling steps)

    def budget(self, epochs: int, seeds: int) -> Budget:
        """The `gpu` budget: the arms' configs with this shape and `epochs`, judged with this evaluation."""
        overrides = (
            f"sample.batch_size_per_device={self.sample_batch}",
            f"sample.num_batches_per_epoch={self.samples_per_epoch // self.sample_batch}",
            f"train.batch_size_per_device={self.micro_batch}",
            f"train.gradient_accumulation_steps={self.samples_per_step // self.micro_batch}",
            f"train.num_epochs={epochs}",
            f"eval.num_seeds={self.eval_seeds}",
            f"checkpoint_every={epochs}",
            *self.extra,
        )
        per_family = max(1, self.eval_prompts // 4)
        return Budget("gpu", overrides, seeds, self.eval_prompts, self.eval_seeds, self.eval_steps, per_family,
                      self.eval_seeds)  # fmt: skip


SMOKE = Shape(
    samples_per_epoch=4, sample_batch=2, samples_per_step=2, micro_batch=2, target_epochs=2, min_epochs=1,
    eval_prompts=2, eval_seeds=1, eval_steps=2, extra=("sample.num_steps=2", "backprop.num_grad_steps=2"),
)  # fmt: skip
SMOKE_MODEL = "texforce/tiny-random"


@dataclass(frozen=True)
class Throughput:
    """`texforce train` at the suite's shape, `processes` at once: each one's start-up, steady seconds per sample."""

    processes: int
    startup_seconds: float
    seconds_per_sample: float

    def run_seconds(self, samples: int) -> float:
        return self.startup_seconds + samples * self.seconds_per_sample


@dataclass
class Work:
    """One experiment, from its discovery run with one training seed: the arms `train_arm` trained (config, extra),
    the runs it trained in its own processes (one seed after another), each evaluation's configurations."""

    arms: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    serial_runs: int = 0
    setups: list[int] = field(default_factory=list)
    error: str | None = None

    @classmethod
    def from_json(cls, data: dict) -> Work:
        return cls(**{**data, "arms": [(config, tuple(extra)) for config, extra in data["arms"]]})


@dataclass
class Plan:
    """The budget the experiments got, and what it was expected to cost."""

    epochs: int
    seeds: int
    workers: int
    experiments: list[str]
    job_seconds: float  # one arm-seed in the pool
    run_seconds: float  # one arm-seed alone (a run of its own, or `train_arm` in the experiment's process)
    eval_seconds: float  # one configuration of one evaluation
    predicted: dict[str, float]  # pretrain, then each experiment's own seconds
    notes: list[str]


def evaluation_seconds(w: Work, seeds: int, eval_seconds: float) -> float:
    """An experiment's evaluations: each renders its configurations (one per seed and kind, plus the base)."""
    return sum(1 + (count - 1) * seeds for count in w.setups) * eval_seconds


def pooled_arms(work: dict[str, Work], names: list[str]) -> list[tuple[str, tuple[str, ...]]]:
    """The arms of these experiments, each once (`methods` and `curves` share two)."""
    return list(dict.fromkeys(arm for name in names for arm in work[name].arms))


def predict(
    shape: Shape,
    work: dict[str, Work],
    names: list[str],
    epochs: int,
    seeds: int,
    pool: Throughput,
    single: Throughput,
    eval_seconds: float,
) -> dict[str, float]:
    """Seconds of the pretraining pool (all arm-seeds, `pool.processes` at a time) and of each experiment afterwards
    (its evaluations, and its runs in their own processes, one after another, each with its own evaluation)."""
    samples = epochs * shape.samples_per_epoch
    jobs = seeds * len(pooled_arms(work, names))
    predicted = {"pretrain": math.ceil(jobs / pool.processes) * pool.run_seconds(samples)}
    for name in names:
        w = work[name]
        runs = w.serial_runs * seeds * (single.run_seconds(samples) + RUN_EVAL_SETUPS * eval_seconds)
        predicted[name] = evaluation_seconds(w, seeds, eval_seconds) + runs
    return predicted


def plan(
    shape: Shape,
    work: dict[str, Work],
    names: list[str],
    seconds: float,
    seeds: int,
    single: Throughput,
    concurrent: Throughput | None,
    eval_seconds: float,
) -> Plan:
    """The largest budget whose predicted seconds × SAFETY fit `seconds`, with the faster of one process and the
    concurrent pool. Given up in this order: epochs (down to `shape.min_epochs`); the experiments that train their
    own runs one after another (they cannot use the pool); then 2 seeds; experiments from the end; 1 seed."""
    names = [name for name in names if work[name].error is None]
    pools = [single] + ([concurrent] if concurrent else [])
    pooled = [name for name in names if not work[name].serial_runs] or names
    candidates = [(seeds, names), (seeds, pooled)]
    for count in (min(seeds, 2), 1):
        candidates += [(count, pooled[:k]) for k in range(len(pooled), 0, -1)]
    for count, chosen in candidates:
        for epochs in range(shape.target_epochs, shape.min_epochs - 1, -1):
            options = [(predict(shape, work, chosen, epochs, count, p, single, eval_seconds), p) for p in pools]
            predicted, pool = min(options, key=lambda option: sum(option[0].values()))
            if sum(predicted.values()) * SAFETY <= seconds:
                samples = epochs * shape.samples_per_epoch
                return Plan(
                    epochs, count, pool.processes, chosen, pool.run_seconds(samples), single.run_seconds(samples),
                    eval_seconds, predicted, degradations(shape, names, epochs, seeds, count, chosen),
                )  # fmt: skip
    note = f"nothing fits {seconds:.0f} s, not even 1 seed × {shape.min_epochs} epochs of one experiment"
    return Plan(0, 0, 1, [], 0.0, 0.0, eval_seconds, {}, [note])


def degradations(shape: Shape, names: list[str], epochs: int, seeds: int, count: int, chosen: list[str]) -> list[str]:
    """What the plan gave up against the target, in words."""
    notes = []
    if epochs < shape.target_epochs:
        target, got = shape.target_epochs * shape.samples_per_epoch, epochs * shape.samples_per_epoch
        notes.append(f"samples per arm {got:,} instead of {target:,} ({epochs} of {shape.target_epochs} epochs)")
    if count < seeds:
        notes.append(f"{count} training seed{'s' * (count > 1)} instead of {seeds}")
    if dropped := [name for name in names if name not in chosen]:
        notes.append(f"not run, no time: {', '.join(dropped)}")
    return notes


def throughput(runs: list[tuple[float, Path]], samples_per_epoch: int) -> Throughput:
    """From (wall seconds, run folder) of processes run together: mean start-up (wall minus the epochs' phase seconds)
    and mean steady seconds per sample (the median epoch after the first, which warms up)."""
    startups, steady = [], []
    for wall, run_dir in runs:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        epochs = [sum(v for k, v in json.loads(line).items() if k.startswith("time/")) for line in lines if line]
        startups.append(wall - sum(epochs))
        steady.append(statistics.median(epochs[1:] or epochs))
    return Throughput(len(runs), statistics.mean(startups), statistics.mean(steady) / samples_per_epoch)
