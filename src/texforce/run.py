"""A training run on disk: its folder, config, metrics, progress, grids, checkpoints, and resume.

Run folder:
    config.yaml       the resolved config (a resume must match it)
    metrics.jsonl     one JSON object per epoch (epoch, reward_mean, reward_std, ppo/*, lr/*, time/*)
    eval.json         mean reward before/after training, on training and held-out prompts
    samples/          epoch_{n:05d}.png grids; eval_before/after_*.png
    checkpoints/      checkpoint_{epoch:05d}/ (see checkpoint.py)
    lora/             the final adapters, diffusers + PEFT formats (see export.py)
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml
from accelerate import PartialState
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from texforce.checkpoint import complete_checkpoints, write_checkpoint
from texforce.config import RunConfig, load_config, save_config, to_dict
from texforce.distributed import process_state
from texforce.errors import TexforceError
from texforce.export import write_folder_atomically
from texforce.images import make_grid, save_png
from texforce.tracking import Tracker, captions

if TYPE_CHECKING:
    from texforce.sampling import Trajectory
    from texforce.trainer import EpochStats

GRID_SIZE = 16


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunLogger:
    """Everything a run writes or prints, kept out of the training loop. Only the main process (`main`)
    of a multi-process run writes or prints."""

    def __init__(
        self, run_dir: Path, num_epochs: int, keep_checkpoints: int, quiet: bool = False, main: bool = True
    ) -> None:
        self.run_dir = run_dir
        self.num_epochs = num_epochs
        self.keep_checkpoints = keep_checkpoints
        self.quiet = quiet or not main
        self.main = main
        self.console = Console(stderr=True, quiet=self.quiet)
        self.warnings = Console(stderr=True, quiet=not main)  # shown even when quiet
        self.metrics_path = run_dir / "metrics.jsonl"
        self.tracker: Tracker | None = None

    def describe(self, config: RunConfig, device: torch.device, steps_per_epoch: int, num_params: int) -> None:
        self.console.print(
            f"[bold]texforce[/] {config.model.base} on {device} · reward {config.reward} · "
            f"{config.samples_per_epoch_per_device} samples × {config.sample.num_steps} steps per epoch · "
            f"{steps_per_epoch} optimizer steps per epoch · {num_params:,} trainable parameters · {self.run_dir}"
        )

    def progress(self, description: str, total: int) -> Callable[[], None]:
        """A progress bar with ETA; returns the function that advances it (a no-op when quiet or empty)."""
        if self.quiet or total <= 0 or (not sys.stderr.isatty() and os.environ.get("TEXFORCE_PROGRESS") != "1"):
            return _NoProgress()
        bar = Progress(
            TextColumn(f"{description:>9}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        bar.start()
        task = bar.add_task(description, total=total)
        return _Bar(bar, task)

    def done(self, advance: Callable[[], None]) -> None:
        if isinstance(advance, _Bar):
            advance.bar.stop()

    def warn(self, message: str) -> None:
        self.warnings.print(f"[yellow]warning:[/] {message}")

    def start_tracking(self, config: RunConfig) -> None:
        """Open TensorBoard (and wandb if enabled); called once the run folder exists."""
        if self.main:
            self.tracker = Tracker(self.run_dir, config)

    def epoch(self, epoch: int, stats: EpochStats, trajectory: Trajectory, lrs: list[float]) -> None:
        """Append to metrics.jsonl, save the grid, send both to the trackers, print the one-line summary."""
        if not self.main:
            return
        finite = np.isfinite(stats.rewards)  # dropped samples are counted, not averaged
        record: dict[str, Any] = {
            "epoch": epoch,
            "reward_mean": float(np.mean(stats.rewards[finite])),
            "reward_std": float(np.std(stats.rewards[finite])),
        }
        for name, values in stats.components.items():
            record[f"reward/{name}_mean"] = float(np.mean(values[finite]))
            record[f"reward/{name}_std"] = float(np.std(values[finite]))
        record.update({f"ppo/{k}": v for k, v in stats.update.items()})
        record.update({f"lr/group{i}": lr for i, lr in enumerate(lrs)})
        record.update({f"time/{k}_s": round(v, 3) for k, v in stats.seconds.items()})
        record.update({f"faults/{k}": v for k, v in stats.faults.items()})
        grid = make_grid(trajectory.images[:GRID_SIZE])
        try:
            with open(self.metrics_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            save_png(grid, self.run_dir / "samples" / f"epoch_{epoch:05d}.png")
        except OSError as error:
            raise TexforceError(
                f"cannot write to the run folder {self.run_dir} ({error.strerror or error}); "
                "the last checkpoint is intact: free space, then --resume"
            ) from None
        if self.tracker is not None:
            self.tracker.scalars(record, epoch)
            lines = captions(trajectory.prompts[:GRID_SIZE], stats.rewards[:GRID_SIZE])
            self.tracker.images("samples", grid, lines, epoch)
        seconds = stats.seconds
        self.console.print(
            f"epoch {epoch}/{self.num_epochs}  reward {record['reward_mean']:.4f} ± {record['reward_std']:.4f}  "
            f"loss {stats.update.get('loss', 0):+.2e}  kl {stats.update.get('approx_kl', 0):.2e}  "
            f"clip {stats.update.get('clipfrac', 0):.2f}  lr {lrs[0]:.1e}  "
            f"[sample {seconds['sample']:.1f}s · reward {seconds['reward']:.1f}s · train {seconds['train']:.1f}s]"
            + "".join(f"  {k.replace('_', ' ')} {v}" for k, v in stats.faults.items() if v)
        )

    def checkpoint(self, epoch: int, state: dict[str, Any], write_adapters: Callable[[Path], None]) -> None:
        """The main process writes; every process waits for it, so none runs ahead of a failed save."""
        if self.main:
            write_checkpoint(self.run_dir, epoch, state, write_adapters, keep=self.keep_checkpoints)
        PartialState().wait_for_everyone()

    def truncate_metrics(self, epoch: int) -> None:
        """Drop metrics of epochs after `epoch` (written before a crash, not covered by the checkpoint)."""
        if not self.main or not self.metrics_path.exists():
            return
        lines = [line for line in self.metrics_path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line)["epoch"] <= epoch]
        write_text_atomic(self.metrics_path, "".join(line + "\n" for line in kept))


class _NoProgress:
    def __call__(self) -> None:
        pass


class _Bar:
    def __init__(self, bar: Progress, task: Any) -> None:
        self.bar, self.task = bar, task

    def __call__(self) -> None:
        self.bar.advance(self.task)


def _config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in old.keys() | new.keys():
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _config_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key} ({a!r} → {b!r})")
    return sorted(keys)


def prepare_run(
    config_path: str | None, overrides: list[str], resume: str | None
) -> tuple[RunConfig, Path, Path | None]:
    """Resolve config and run folder; for `--resume`, the run's own config and its latest complete checkpoint.

    A new run's folder is made later, by `create_run_dir` once the model has loaded: bad input leaves nothing.
    """
    if resume is None:
        config = load_config(config_path, overrides)
        name = config.run_name or datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = Path(config.output_dir) / name
        if run_dir.exists() and any(run_dir.iterdir()):
            raise TexforceError(f"run folder {run_dir} already exists; pass --resume {run_dir} or another run_name")
        return config, run_dir, None
    run_dir = Path(resume)
    if not (run_dir / "config.yaml").is_file():
        raise TexforceError(f"--resume {resume}: not a run folder (no config.yaml)")
    config = load_config(run_dir / "config.yaml")
    if config_path is not None or overrides:
        requested = load_config(config_path or run_dir / "config.yaml", overrides)
        requested.run_name, requested.output_dir = config.run_name, config.output_dir
        changed = _config_diff(to_dict(config), to_dict(requested))
        if changed:
            raise TexforceError(f"--resume {resume}: the run was started with another config: {', '.join(changed)}")
    checkpoints = complete_checkpoints(run_dir)
    return config, run_dir, (checkpoints[-1] if checkpoints else None)


def create_run_dir(config: RunConfig, run_dir: Path) -> None:
    """Create a new run's folder and write its resolved config; an unwritable place is a one-line error."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / ".config.yaml.tmp")
        os.replace(run_dir / ".config.yaml.tmp", run_dir / "config.yaml")
    except OSError as error:
        raise TexforceError(f"cannot write to the run folder {run_dir}: {error.strerror or error}") from None


def train_run(
    config_path: str | None = None, overrides: list[str] = (), resume: str | None = None, quiet: bool = False
) -> Path:
    """`texforce train`: set up, evaluate, train (resumably), evaluate, export. Returns the run folder.

    Under `accelerate launch` every process runs this; only the main one evaluates and writes.
    """
    from texforce.trainer import DDPOTrainer

    config, run_dir, checkpoint = prepare_run(config_path, list(overrides), resume)
    state = process_state(config.model.device)
    logger = RunLogger(run_dir, config.train.num_epochs, config.keep_checkpoints, quiet, state.is_main_process)
    trainer = DDPOTrainer(config, logger)
    trainer.setup()
    state.wait_for_everyone()  # every process has checked the run folder before the main one creates it
    if resume is None and state.is_main_process:
        create_run_dir(config, run_dir)
    logger.start_tracking(config)
    if checkpoint is not None:
        trainer.load_checkpoint(checkpoint)
        logger.console.print(f"resumed from {checkpoint} (epoch {trainer.start_epoch})")
    logger.truncate_metrics(trainer.start_epoch)
    eval_path = run_dir / "eval.json"
    results = json.loads(eval_path.read_text()) if eval_path.exists() else {}
    if "before" not in results and state.is_main_process:
        results["before"] = evaluate(trainer, "before")
        write_text_atomic(eval_path, json.dumps(results, indent=2))
    state.wait_for_everyone()
    started = time.perf_counter()
    trainer.train()
    if state.is_main_process:
        results["after"] = evaluate(trainer, "after")
        results["train_seconds_this_session"] = round(time.perf_counter() - started, 1)
        export_adapters(trainer, run_dir)
        write_text_atomic(eval_path, json.dumps(results, indent=2))
        logger.tracker.close()
        summarise(logger.console, results)
    state.wait_for_everyone()
    return run_dir


def export_adapters(trainer: Any, run_dir: Path) -> None:
    """The final adapters into `RUN/lora`, via a temporary folder and a rename."""
    final = run_dir / "lora"
    try:
        write_folder_atomically(final, trainer.save_adapters)
    except OSError as error:
        raise TexforceError(
            f"cannot write the final adapters to {final} ({error.strerror or error}); the last checkpoint "
            "holds them too"
        ) from None


def evaluate(trainer: Any, when: str) -> dict[str, float]:
    """Mean reward on training and held-out prompts (fixed seeds); saves a grid of each."""
    e, prompts = trainer.config.eval, trainer.prompts
    result = {}
    for name, chosen in (
        ("train", prompts.train[: e.num_prompts]),
        ("heldout", prompts.eval[: e.num_prompts]),
    ):
        if not chosen:
            continue
        mean, images = trainer.evaluate(chosen)
        result[name] = round(mean, 5)
        save_png(make_grid(images), trainer.log.run_dir / "samples" / f"eval_{when}_{name}.png")
    return result


def summarise(console: Console, results: dict[str, Any]) -> None:
    before, after = results["before"], results["after"]
    for name in after:
        console.print(
            f"{name:>8} prompts: reward {before[name]:.4f} → {after[name]:.4f} ({after[name] - before[name]:+.4f})"
        )
    console.print(yaml.safe_dump({"eval": results}, sort_keys=False).rstrip(), style="dim")
