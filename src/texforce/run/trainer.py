"""Trainer: the machinery around one training algorithm — setup, the epoch loop, evaluation, state and resume.

The algorithm (`texforce.algorithms`: DDPO's sample → reward → advantage → PPO update in `algorithms/ddpo.py`, or
direct reward backprop in `algorithms/backprop.py`) runs one epoch at a time. What every algorithm shares lives
here: the policy (LoRA adapters on the frozen pipeline), optimizer and LR schedule, reward, prompts, the process
group, and the checkpointed state. What a run writes or prints is the `RunLogger`'s (`observe/runlog.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from itertools import groupby
from operator import itemgetter
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.optimization import get_scheduler

from texforce.algorithms import build_algorithm
from texforce.algorithms.policy import Policy
from texforce.bases.loading import resolve_device
from texforce.errors import TexforceError
from texforce.observe.runlog import RunLogger
from texforce.prompts import load_prompt_set
from texforce.prompts.styles import get_style
from texforce.rewards import RewardOutput, build_reward
from texforce.run.ema import ParameterEMA
from texforce.run.run_config import RunConfig
from texforce.training.checkpoint import load_checkpoint_state, rng_state, set_rng_state
from texforce.training.distributed import (
    average_gradients,
    batch_generator,
    gather_to_main,
    process_slice,
    process_state,
)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The epoch's own random stream (prompts, noise, shuffles): a resumed run replays it exactly."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class Trainer:
    """Lifecycle: `setup()` → `train()` (resumable) → `policy.save_adapters(...)`."""

    def __init__(self, config: RunConfig, logger: RunLogger) -> None:
        self.config = config
        self.log = logger

    def setup(self, pipe: DiffusionPipeline | None = None) -> None:
        """Build the run's parts; `pipe` (built already, e.g. by a benchmark on the GPU) replaces loading the base."""
        c = self.config
        # one process, or one of `accelerate launch`'s
        self.dist = process_state(c.model.device, c.distributed.timeout_minutes)
        self.device = self.dist.device if self.dist.num_processes > 1 else resolve_device(c.model.device)
        torch.manual_seed(c.seed)
        self.policy = Policy(c, self.device, pipe)
        self.optimizer = torch.optim.AdamW(
            self.policy.param_groups,
            betas=(c.train.adam_beta1, c.train.adam_beta2),
            weight_decay=c.train.adam_weight_decay,
            eps=c.train.adam_epsilon,
        )
        self.reward_fn = build_reward(c.reward, self.device)  # in fp32 as every command scores (REWARD_DTYPE)
        judge = c.eval.reward  # None: the training reward judges
        self.judge = build_reward(judge, self.device) if judge else self.reward_fn
        self.prompts = load_prompt_set(c.prompts.train, c.prompts.eval)
        # the texts trained on: every training prompt in each of `prompts.train_styles`, judged as the plain one
        written = [(get_style(style).apply(p), p) for style in c.prompts.train_styles for p in self.prompts.train]
        self.train_texts = [text for text, _ in written]
        self.plain_of = dict(written)
        self.algorithm = build_algorithm(c.train.algorithm, self)
        self.ema = ParameterEMA(self.trainable, c.train.ema_decay) if c.train.ema_decay > 0 else None
        self.lr_scheduler = get_scheduler(
            "cosine" if c.train.lr_schedule == "cosine" else "constant_with_warmup",
            self.optimizer,
            num_warmup_steps=c.train.lr_warmup_steps,
            num_training_steps=max(1, self.algorithm.steps_per_epoch * c.train.num_epochs),
        )
        self.start_epoch, self.global_step, self.epoch = 0, 0, 0
        self.log.describe(c, self.device, self.algorithm.steps_per_epoch, sum(p.numel() for p in self.trainable))

    @property
    def trainable(self) -> list[torch.nn.Parameter]:
        return self.policy.trainable

    # ------------------------------------------------------------------ the loop
    def train(self) -> None:
        c = self.config
        for epoch in range(self.start_epoch, c.train.num_epochs):
            self.epoch = epoch + 1
            stats = self.algorithm.run_epoch(epoch, epoch_generator(c.seed, epoch))
            self.log.epoch(epoch + 1, stats, self.lr_scheduler.get_last_lr())
            if (epoch + 1) % c.checkpoint_every == 0 or epoch + 1 == c.train.num_epochs:
                write = partial(self.policy.save_adapters, ui_name=self.log.run_dir.name)
                self.log.checkpoint(epoch + 1, self.state_dict(epoch + 1), write)

    # ------------------------------------------------------------------ shared by the algorithms
    def draw_prompts(self, generator: torch.Generator, group_size: int = 1) -> list[str]:
        """The epoch's prompts for every process (`samples_per_epoch_per_device` each), the same on every process;
        each drawn prompt comes `group_size` times in a row (DDPO's grouped advantages)."""
        train, count = self.train_texts, self.config.samples_per_epoch_per_device * self.dist.num_processes
        picks = torch.randint(len(train), (count // group_size,), generator=generator)
        return [train[i] for i in picks.tolist() for _ in range(group_size)]

    def judged(self, prompts: Sequence[str]) -> list[str]:
        """The prompts a reward judges for these drawn texts: each styled training text's plain prompt."""
        return [self.plain_of.get(p, p) for p in prompts]

    def process_share(self, items: Sequence[Any]) -> list[Any]:
        """This process's contiguous slice of an epoch-wide list."""
        per_process = len(items) // self.dist.num_processes
        first = per_process * self.dist.process_index
        return list(items[first : first + per_process])

    def batch_generators(self, epoch: int) -> list[torch.Generator]:
        """One random stream per sample batch, keyed by its global index: the process count does not matter."""
        num_batches = self.config.sample.num_batches_per_epoch
        first = num_batches * self.dist.process_index
        return [batch_generator(self.config.seed, epoch, first + k) for k in range(num_batches)]

    def my_micro_batches(self, num_micro_batches: int, process: int | None = None) -> list[int]:
        """Global micro-batch indices this process (or `process`) trains on: micro-batch j belongs to optimizer
        step j // (accumulation · processes), and process r takes the r-th run of `accumulation` of them."""
        accumulation, world = self.config.train.gradient_accumulation_steps, self.dist.num_processes
        process = self.dist.process_index if process is None else process
        return [j for j in range(num_micro_batches) if (j // accumulation) % world == process]

    def score(self, images: torch.Tensor, prompts: list[str]) -> RewardOutput:
        """Rewards (N,) of images (N, 3, H, W) of the drawn `prompts` (each judged as `judged` says), no gradient,
        in sampling-sized chunks under a progress bar."""
        chunk, count, prompts = self.config.sample.batch_size_per_device, len(prompts), self.judged(prompts)
        task = self.log.progress("scoring", -(-count // chunk))
        outputs = []
        for start in range(0, count, chunk):
            outputs.append(self.reward_fn(images[start : start + chunk], prompts[start : start + chunk]))
            task()
        self.log.done(task)
        return RewardOutput.concat(outputs)

    def finite_rewards(self, rewards: torch.Tensor, epoch: int) -> np.ndarray:
        """Mask (N,) of usable rewards. NaN/inf ones are dropped with a warning; above
        `train.max_nonfinite_fraction` of the batch the run stops here, before the update touches the weights."""
        finite = torch.isfinite(rewards).numpy()
        dropped, limit = int((~finite).sum()), self.config.train.max_nonfinite_fraction
        if dropped > limit * len(finite):
            raise TexforceError(
                f"epoch {epoch}: {dropped} of {len(finite)} rewards are NaN/inf (more than "
                f"train.max_nonfinite_fraction={limit}); stopped before the update, {self.log.resume_hint()}"
            )
        if dropped:
            self.log.warn(f"epoch {epoch}: dropped {dropped} of {len(finite)} samples with a NaN/inf reward")
        return finite

    def optimizer_step(self) -> float:
        """Average over processes, clip, step, schedule. A non-finite gradient is dropped (never reaches the
        weights or AdamW's moments) and counted."""
        average_gradients(self.dist, self.trainable)
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.config.train.max_grad_norm)
        if torch.isfinite(norm):
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update()
        else:
            self.log.warn(f"non-finite gradient norm at step {self.global_step}; update skipped")
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        return float(norm)

    def final_weights(self) -> AbstractContextManager:
        """Within the block the adapters hold what the run delivers: the moving average with `train.ema_decay`,
        else the trained weights as they are."""
        return self.ema.applied() if self.ema is not None else nullcontext()

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(
        self, prompts: Sequence[str], seeds: Sequence[int], texts: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Judged rewards (S, P) of every prompt × seed (`eval.reward`, default the training reward), rendered with
        deterministic DDIM from the seed's noise (the same noise for every prompt, as `texforce eval`), and the
        images (P, 3, H, W) of the first seed: on the main process, None on the others. `texts`: what the model is
        given instead (a prompt style); the judge still reads `prompts`.

        Every process renders and judges its contiguous slice of the seed-major prompt × seed list, each seed's
        part in batches of at most `sample.batch_size_per_device` prompts (the evaluation's memory is the
        sampling's, `texforce plan`, whatever `eval.num_prompts` is), and the main process gathers the scores and
        images (as 8-bit pixels, all a grid keeps): no process waits in a barrier while another renders.
        """
        pairs = [(s, p) for s in range(len(seeds)) for p in range(len(prompts))]
        size = self.config.sample.batch_size_per_device
        scores, pixels = [], []
        for s, group in groupby(pairs[process_slice(self.dist, len(pairs))], key=itemgetter(0)):
            indices = [p for _, p in group]
            chosen = [prompts[p] for p in indices]
            noise = self.policy.initial_noise(1, torch.Generator().manual_seed(seeds[s]))
            shown = [texts[p] for p in indices] if texts is not None else chosen
            chunks = [shown[i : i + size] for i in range(0, len(shown), size)]
            images = torch.cat([self.policy.generate(c, noise.expand(len(c), -1, -1, -1)) for c in chunks])
            scores.append(self.judge(images, chosen).total.float().cpu())
            if s == 0:
                pixels.append((images.clamp(0, 1) * 255).round().to(torch.uint8))
        shares = gather_to_main(self.dist, (scores, pixels))
        if shares is None:
            return None
        judged = torch.cat([score for share, _ in shares for score in share]).view(len(seeds), len(prompts))
        return judged, torch.cat([image for _, share in shares for image in share]).float() / 255

    # ------------------------------------------------------------------ state
    def state_dict(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch,
            "global_step": self.global_step,
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "algorithm": self.algorithm.state_dict(),
            "rng": rng_state(),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
        }

    def load_checkpoint(self, checkpoint) -> None:
        """Restore adapters, optimizer, LR schedule, the algorithm's state, RNG states and counters."""
        state = load_checkpoint_state(checkpoint)
        self.policy.load_adapters(checkpoint / "lora")
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.algorithm.load_state_dict(state["algorithm"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"])
        self.start_epoch, self.global_step = state["epoch"], state["global_step"]
