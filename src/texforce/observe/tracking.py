"""Experiment trackers: TensorBoard (always available) and Weights & Biases (optional, if installed and enabled).

TensorBoard event files go to `RUN/tensorboard/` (`tensorboard --logdir runs`): every metric of
`metrics.jsonl` as a scalar at step = epoch (reward mean/std and per component, PPO loss, KL, clip
fraction, learning rates, phase times, fault counts), and each epoch's sample grid as an image whose
prompts and rewards are in a text summary of the same tag (TensorBoard images have no caption).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from texforce.config import SharedConfig, to_dict


def captions(prompts: list[str], rewards: np.ndarray) -> list[str]:
    """`#i prompt · reward r` for each image of a grid, in grid order."""
    return [f"#{i} {p} · reward {r:.4g}" for i, (p, r) in enumerate(zip(prompts, rewards, strict=True))]


class Tracker:
    """Sends scalars and captioned image grids to TensorBoard and, if `log.wandb`, to wandb."""

    def __init__(self, run_dir: Path, config: SharedConfig) -> None:
        self.tensorboard = None
        self.wandb = None
        if config.log.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if config.log.wandb:  # validate() checked that wandb is installed
            import wandb

            self.wandb = wandb.init(
                project=config.log.wandb_project, name=run_dir.name, dir=str(run_dir), config=to_dict(config)
            )

    def scalars(self, record: dict[str, Any], step: int) -> None:
        values = {k: float(v) for k, v in record.items() if k != "epoch" and isinstance(v, int | float)}
        if self.tensorboard is not None:
            for key, value in values.items():
                self.tensorboard.add_scalar(key, value, step)
            self.tensorboard.flush()
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def images(self, tag: str, grid: Image.Image, lines: list[str], step: int) -> None:
        """A picture (a grid of samples) with one caption line per image."""
        array = np.asarray(grid.convert("RGB"))
        if self.tensorboard is not None:
            self.tensorboard.add_image(tag, array, step, dataformats="HWC")
            self.tensorboard.add_text(tag, "  \n".join(lines), step)  # markdown line breaks
            self.tensorboard.flush()
        if self.wandb is not None:
            import wandb

            self.wandb.log({tag: wandb.Image(array, caption=" | ".join(lines))}, step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
        if self.wandb is not None:
            self.wandb.finish()
