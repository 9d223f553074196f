"""What every experiment shares: budgets, cached training of one arm, fixed-seed evaluation, statistics.

An arm is a shipped config (`world_text`, …) trained once per seed into `RUNS/<arm>_s<seed>`; a finished run
of the same resolved config is reused (so `curves` reuses the runs of `methods`), an unfinished one resumed.
`accumulate` goes further: what a verdict needs from each seed is committed under the page's `runs/` folder
(`records`), and a seed recorded there is neither trained nor judged again.
Judging uses `texforce.observe.evaluation.run_eval` on held-out prompts with fixed evaluation seeds. `arm_command`
is the same training as its own `texforce train` process, so that a scheduler (`benchmarks/gpu_suite.py`) can train
arms ahead, concurrently, and the experiment then reuses them; `Settings.deadline` stops an experiment before an arm
that would not finish in time.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from texforce.errors import TexforceError
from texforce.experiments.records import (
    RUNS,
    Records,
    evaluation_key,
    load_records,
    record_evaluation,
    record_run,
)
from texforce.experiments.verdicts import Verdict
from texforce.observe.evaluation import AdapterSetup, Summary, run_eval
from texforce.run.run_config import RunConfig, load_config

EVAL_SEED = 1000  # evaluation seeds EVAL_SEED, EVAL_SEED+1, …: disjoint from the training seeds 0, 1, 2, …


class DeadlineReached(TexforceError):
    """An arm would not finish training before `Settings.deadline`: the experiment stops before starting it."""


@dataclass(frozen=True)
class Budget:
    """How much compute one experiment spends: training overrides on top of each arm's config, and evaluation."""

    name: str
    train_overrides: tuple[str, ...]
    num_seeds: int
    num_eval_prompts: int
    num_eval_seeds: int
    eval_steps: int
    headline_prompts_per_family: int  # the headline set: the ceiling's held-out plain prompts of each family …
    headline_seeds: int  # … × its evaluation seeds (`headline_set`)


BUDGETS = {
    # the shipped configs as they are, judged on 32 held-out prompts × 2 seeds at 20 DDIM steps
    "full": Budget(
        "full",
        (),
        num_seeds=3,
        num_eval_prompts=32,
        num_eval_seeds=2,
        eval_steps=20,
        headline_prompts_per_family=16,
        headline_seeds=4,
    ),
    # seconds: one epoch of 2 samples × 2 steps, one held-out prompt pair; checks the plumbing, not the claims
    "tiny": Budget(
        "tiny",
        (
            "sample.num_steps=2",
            "backprop.num_grad_steps=2",  # at most the 2 steps (a backprop arm's own K may be 20)
            "sample.batch_size_per_device=2",
            "sample.num_batches_per_epoch=1",
            "train.batch_size_per_device=2",
            "train.gradient_accumulation_steps=1",
            "advantage.group_size=2",  # grouped advantages (the default run's) need a group to divide the 2 samples
            "train.num_epochs=1",
            "eval.num_prompts=2",  # the run's own before/after judging (the default run's: 64 prompts × 4 seeds)
            "eval.num_seeds=1",
        ),
        num_seeds=1,
        num_eval_prompts=2,
        num_eval_seeds=1,
        eval_steps=2,
        headline_prompts_per_family=1,
        headline_seeds=1,
    ),
}


@dataclass
class Settings:
    """One `texforce experiment` invocation."""

    budget: Budget
    output: Path  # docs/NAME: results.md, charts, eval folders
    runs_dir: Path  # training runs (a cache shared by experiments of the same budget)
    num_seeds: int
    model: str | None = None  # base model of every arm and of the evaluation; None = the arms' own
    overrides: tuple[str, ...] = ()  # key=value applied to every arm
    judge: str = "world_score"
    proxy: str = "world_preference"  # the learned reward of `hacking`
    quiet: bool = True
    command: str = ""
    deadline: float | None = None  # time.time() by which training must end; an arm that would not is not started
    arm_seconds: float = 0.0  # the expected training time of one arm-seed, for the deadline
    seconds: dict[str, float] = field(default_factory=dict)  # filled in: train, eval
    # filled in, in order: (config, seed, extra) of every arm `train_arm` returned, of those it trained (not reused),
    # and the configurations each `evaluate` rendered
    arms: list[tuple[str, int, tuple[str, ...]]] = field(default_factory=list)
    trained: list[tuple[str, int, tuple[str, ...]]] = field(default_factory=list)
    evaluated: list[int] = field(default_factory=list)
    judged_on: list[str] = field(default_factory=list)  # filled in: what each `evaluate` rendered, for the page
    verdicts: list[Verdict] = field(default_factory=list)  # filled in: the claims' verdicts, shown first on the page
    page_only: bool = False  # rewrite the page from the committed records, train and judge nothing
    reused: list[int] = field(default_factory=list)  # filled in: seeds read from the committed records

    @property
    def seeds(self) -> list[int]:
        return list(range(self.num_seeds))

    @property
    def eval_seeds(self) -> list[int]:
        return list(range(EVAL_SEED, EVAL_SEED + self.budget.num_eval_seeds))


@contextmanager
def phase(settings: Settings, name: str) -> Iterator[None]:
    """Add the wall time of the block to `settings.seconds[name]`."""
    started = time.perf_counter()
    yield
    settings.seconds[name] = settings.seconds.get(name, 0.0) + time.perf_counter() - started


def arm_overrides(settings: Settings, seed: int, extra: Sequence[str] = ()) -> list[str]:
    """Budget, model, user and arm overrides, then the run's identity; in-run evaluation is off (we judge)."""
    model = [f"model.base={settings.model}"] if settings.model else []
    identity = [f"seed={seed}", f"output_dir={settings.runs_dir}", "eval.num_prompts=0"]
    return [*settings.budget.train_overrides, *model, *settings.overrides, *extra, *identity]


def arm_run(
    settings: Settings, config: str, seed: int, extra: Sequence[str] = (), tag: str = ""
) -> tuple[list[str], Path]:
    """The overrides (run name included) and the run folder of one arm-seed; `tag` names a variant of the arm (its
    `extra` overrides) apart from the plain one."""
    name = f"{config.removeprefix('world_')}{tag}_s{seed}"
    return [*arm_overrides(settings, seed, extra), f"run_name={name}"], settings.runs_dir / name


def arm_command(settings: Settings, config: str, seed: int, extra: Sequence[str] = ()) -> list[str]:
    """`texforce train` of one arm-seed as its own process: the run `train_arm` trains (and then reuses)."""
    overrides, run_dir = arm_run(settings, config, seed, extra)
    resume = ["--resume", str(run_dir)] if (run_dir / "config.yaml").is_file() else []
    return [sys.executable, "-m", "texforce", "train", config, *overrides, *resume, "--quiet"]


def train_arm(settings: Settings, config: str, seed: int, extra: Sequence[str] = (), tag: str = "") -> Path:
    """Train shipped config `config` with `seed` (or reuse the finished run of the same config); its run folder.
    Raises `DeadlineReached` instead of starting a run expected to end after `settings.deadline`."""
    from texforce.run.train import prepare_run, train_run

    overrides, run_dir = arm_run(settings, config, seed, extra, tag)
    settings.arms.append((config, seed, tuple(extra)))
    if (run_dir / "lora").is_dir():
        prepare_run(config, overrides, str(run_dir))  # raises when the finished run had another config
        return run_dir
    if settings.deadline is not None and time.time() + settings.arm_seconds > settings.deadline:
        raise DeadlineReached(
            f"{run_dir.name} would take about {settings.arm_seconds:.0f} s and end after the deadline; not started"
        )
    resume = str(run_dir) if (run_dir / "config.yaml").is_file() else None
    run_dir = train_run(config, overrides, resume=resume, quiet=settings.quiet)
    settings.trained.append((config, seed, tuple(extra)))
    return run_dir


def arm_config(settings: Settings, config: str, extra: Sequence[str] = ()) -> RunConfig:
    """The resolved config of an arm (seed 0), for its base model, prompts and sampler settings."""
    return load_config(config, arm_overrides(settings, 0, extra))


def evaluate(
    settings: Settings,
    setups: Sequence[AdapterSetup],
    prompts: Sequence[str],
    rewards: Sequence[str],
    name: str,
    config_name: str = "world_text",
    seeds: Sequence[int] | None = None,
    num_prompts: int | None = None,
    styles: Sequence[str] = ("plain",),
    grid_prompts: int | None = None,
) -> dict[tuple[str, str], Summary]:
    """Render `setups` on `prompts` (the first `num_prompts`, default the budget's) in each prompt style × the
    evaluation seeds (default: the budget's) with the sampler of `config_name` into OUTPUT/`name` (replaced), its grid
    the first `grid_prompts` prompts (default all); the plain style's summaries by (setup, reward) (every style's rows:
    `observe.evaluation.read_rows`)."""
    from texforce.bases.loading import resolve_device
    from texforce.run.defaults import batch_size_for

    config = arm_config(settings, config_name)
    options = {
        "device": resolve_device(config.model.device),
        "dtype": config.model.dtype,
        "steps": settings.budget.eval_steps,
        "guidance_scale": config.sample.guidance_scale,
        "max_sequence_length": config.model.max_sequence_length,
        "batch_size": batch_size_for(config.model.base),  # the world: all at once
    }
    prompts = list(prompts)[: num_prompts or settings.budget.num_eval_prompts]
    seeds = list(seeds or settings.eval_seeds)
    settings.evaluated.append(len(setups))
    shown = f"{seeds[0]}…{seeds[-1]}" if len(seeds) > 2 else ", ".join(map(str, seeds))
    written = "" if list(styles) == ["plain"] else f" in {len(styles)} styles"
    settings.judged_on.append(f"`{name}` {len(prompts)} prompts{written} × seeds {shown}")
    output = settings.output / name
    shutil.rmtree(output, ignore_errors=True)  # judged again: the earlier judging is replaced, not mixed in
    summaries = run_eval(config.model.base, setups, prompts, seeds, rewards, output, options, styles, grid_prompts)
    return {(s.setup, s.reward): s for s in summaries if s.style == "plain"}


def headline_set(settings: Settings) -> tuple[list[str], list[str], list[int]]:
    """The prompts, their families and the seeds of the headline figures: the held-out plain prompts of every family
    and the evaluation seeds of `texforce world ceiling`, so that a tuned adapter is judged where the headroom was
    measured."""
    from texforce.world.headroom.ceiling import EVAL_SEED as CEILING_SEED
    from texforce.world.headroom.ceiling import CeilingConfig, heldout_prompts

    prompts, families = heldout_prompts(CeilingConfig(prompts_per_family=settings.budget.headline_prompts_per_family))
    return prompts, families, list(range(CEILING_SEED, CEILING_SEED + settings.budget.headline_seeds))


def lora(run_dir: Path) -> Path:
    return run_dir / "lora"


def machine() -> str:
    """CPU model, core count and accelerator, for the results page."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    cores = len(os.sched_getaffinity(0))
    return f"{cpu}, {cores} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), {gpu}"


def fresh_folder(path: Path) -> None:
    """Empty `path` (generated output only) so that a rerun leaves no stale file behind; the committed per-run
    records (runs/), the evaluations they were read from (eval_*/, replaced when judged again) and the page with its
    meta.json (replaced whole when the run ends) stay: an interrupted run leaves a folder the next run recognises."""
    if path.exists() and not (path / "results.md").is_file() and any(path.iterdir()):
        raise TexforceError(f"output {path} exists and is not an experiment's folder (no results.md); pick another")
    path.mkdir(parents=True, exist_ok=True)
    for child in path.iterdir():
        if child.is_dir() and (child.name == RUNS or child.name.startswith("eval_")):
            continue
        if child.name in ("results.md", "meta.json"):
            continue
        shutil.rmtree(child) if child.is_dir() else child.unlink()


def accumulate(
    settings: Settings,
    arms: Mapping[str, tuple[str, Sequence[str]]],
    labels: Sequence[str],
    evaluations: Mapping[str, Sequence[str]],
    rewards: Sequence[str],
    setups: Callable[[int, Mapping[str, Path]], Sequence[AdapterSetup]],
    adapters: Sequence[str] = (),
    config_name: str = "world_text",
    trainers: Mapping[str, Callable[[Settings, int], Path]] | None = None,
    **options: Any,
) -> Records:
    """Train and judge the seeds of `settings` not yet recorded under OUTPUT/runs, record them, return all records.

    `arms`: name → (shipped config, extra overrides), trained per seed; `labels`: the arms judged per seed (`setups`
    gives their `AdapterSetup`s from that seed's run folders); `evaluations`: name → prompts, judged by `rewards`
    (none: the arms' per-epoch metrics are all that is recorded); `adapters`: the arms whose LoRA is committed (in
    fp16) because stacks and fusions combine them; `trainers`: arm → how to train it for a seed, where not `train_arm`;
    `options`: `evaluate`'s (seeds, num_prompts, styles). A seed whose scores (or metrics) are committed is skipped."""
    records = load_records(settings.output)
    styles = options.get("styles", ("plain",))
    if evaluations:
        done = set(records.complete_seeds(labels, [evaluation_key(e, s) for e in evaluations for s in styles]))
    else:
        done = set.intersection(*(set(records.metrics(arm)) for arm in arms))
    settings.reused = sorted(done & set(settings.seeds))
    todo = [seed for seed in settings.seeds if seed not in done]
    if not todo:
        return records
    with phase(settings, "train"):
        trainers = trainers or {}
        runs = {seed: {arm: trainers[arm](settings, seed) if arm in trainers else train_arm(settings, c, seed, extra)
                       for arm, (c, extra) in arms.items()} for seed in todo}  # fmt: skip
    for seed, by_arm in runs.items():
        for arm, run in by_arm.items():
            record_run(settings.output, f"{arm}/s{seed}", run, arm in adapters)
    if not evaluations:
        return load_records(settings.output)
    judged = [] if "base" in records.scores else [AdapterSetup("base")]
    judged += [setup for seed in todo for setup in setups(seed, runs[seed])]
    with phase(settings, "eval"):
        for name, prompts in evaluations.items():
            evaluate(settings, judged, prompts, rewards, f"eval_{name}", config_name, **options)
            record_evaluation(settings.output, name)
    return load_records(settings.output)
