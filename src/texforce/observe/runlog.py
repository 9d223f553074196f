"""Everything a training run writes or prints, kept out of the training loop: the one-line epoch summaries,
progress bars, `metrics.jsonl`, sample grids, TensorBoard/wandb, and checkpoint writes.

Only the main process of a multi-process run writes or prints.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
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

from texforce.config import SharedConfig
from texforce.errors import TexforceError
from texforce.files import write_text_atomic
from texforce.images import caption, make_grid, save_png
from texforce.observe.tracking import Tracker, captions
from texforce.training.checkpoint import resume_hint, write_checkpoint


@dataclass
class EpochStats:
    """What an algorithm reports of one epoch, for the logs: rewards (N,) and components (N,) as scored (NaN/inf
    included), the update's means, phase seconds, fault counts (dropped samples, skipped optimizer steps), and the
    first images (n, 3, H, W) with their prompts for the epoch's grid."""

    rewards: np.ndarray
    components: dict[str, np.ndarray]
    update: dict[str, float]
    seconds: dict[str, float]
    faults: dict[str, int]
    images: torch.Tensor
    prompts: list[str]


def check_writable(path: Path, what: str) -> None:
    """Fail now, before any work, when `path` (a file or folder about to be written) cannot be: its nearest existing
    folder must take a new file. A one-line `TexforceError` naming `what`; nothing is left behind."""
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{folder} is not a folder")
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as error:
        raise TexforceError(f"cannot write to {what} {path}: {error.strerror or error}") from None


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
        self.console.soft_wrap = not self.console.is_terminal  # a log file gets whole lines, not 80-column ones
        self.warnings = Console(stderr=True, quiet=not main)  # shown even when quiet
        self.metrics_path = run_dir / "metrics.jsonl"
        self.tracker: Tracker | None = None

    def describe(self, config: SharedConfig, device: torch.device, steps_per_epoch: int, num_params: int) -> None:
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

    def start_tracking(self, config: SharedConfig) -> None:
        """Open TensorBoard (and wandb if enabled); called once the run folder exists."""
        if self.main:
            self.tracker = Tracker(self.run_dir, config)

    def resume_hint(self) -> str:
        """What is true of the run folder's checkpoints, for error messages."""
        return resume_hint(self.run_dir)

    def epoch(self, epoch: int, stats: EpochStats, lrs: list[float]) -> None:
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
        shown = zip(stats.prompts, stats.rewards.tolist(), strict=False)  # this process's images come first
        grid = make_grid(stats.images, captions=[caption(p, [r]) for p, r in list(shown)[: len(stats.images)]])
        try:
            with open(self.metrics_path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
            save_png(grid, self.run_dir / "samples" / f"epoch_{epoch:05d}.png")
        except OSError as error:
            raise TexforceError(
                f"cannot write to the run folder {self.run_dir} ({error.strerror or error}); {self.resume_hint()}"
            ) from None
        if self.tracker is not None:
            self.tracker.scalars(record, epoch)
            lines = captions(stats.prompts, stats.rewards[: len(stats.prompts)])
            self.tracker.images("samples", grid, lines, epoch)
        seconds, update = stats.seconds, stats.update
        several = len(stats.components) > 1  # a weighted sum: each component's mean too
        parts = [f"{name} {record[f'reward/{name}_mean']:.4f}" for name in stats.components if several]
        parts += [f"loss {update.get('loss', 0):+.2e}"]  # kl and clip: DDPO's; backprop has neither
        parts += [f"kl {update['approx_kl']:.2e}"] if "approx_kl" in update else []
        parts += [f"clip {update['clipfrac']:.2f}"] if "clipfrac" in update else []
        parts += [f"kl to base {update['kl_to_frozen']:.2e}"] if "kl_to_frozen" in update else []
        self.console.print(
            f"epoch {epoch}/{self.num_epochs}  reward {record['reward_mean']:.4f} ± {record['reward_std']:.4f}  "
            + "  ".join(parts)
            + f"  lr {lrs[0]:.1e}  [{' · '.join(f'{k} {v:.1f}s' for k, v in seconds.items())}]"
            + "".join(f"  {k.replace('_', ' ')} {v}" for k, v in stats.faults.items() if v),
            markup=False,  # the [phase seconds] are text, not rich markup
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
