"""DDPO (Black et al. 2023), TexForce's algorithm: sample → reward → advantage → PPO update, one epoch at a time.

The text encoder (through its LoRA) is the policy: the update re-encodes the prompts with gradients, so the PPO
loss on the recorded denoising chain reaches it. An optional U-Net LoRA trains alone or jointly. On the same
trajectory the gradient is bit-identical to trl 0.23's `DDPOTrainer` (shared/notes/peer-trl-ddpo.md).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from texforce.algorithms.ppo import PerPromptStatTracker, batch_advantages, group_advantages, ppo_clipped_loss
from texforce.config.schema import check, option
from texforce.observe.runlog import EpochStats
from texforce.sampling import Conditioning, Trajectory, check_schedule, gaussian_log_prob, step_gaussian, step_kl
from texforce.training.checkpoint import kill_point
from texforce.training.distributed import gather_reward, gather_trajectory, mean_over_processes

if TYPE_CHECKING:
    from texforce.algorithms.base import TrainingContext
    from texforce.config import SharedConfig

GRID_SIZE = 16
Reference = tuple[Conditioning, Conditioning | None]  # the frozen policy's conditioning and negative


def gradient_leaves(conditioning: Conditioning | None, trainable: bool) -> Conditioning | None:
    """The conditioning's tensors as fp32 leaves of the U-Net calls (the calls cast them to the U-Net's dtype): the
    gradients of the steps add up in fp32, not in the text encoder's bf16 (0.6 % off over 25 steps)."""
    if conditioning is None:
        return None
    return conditioning.map(lambda t: t.detach().float().requires_grad_(trainable and t.requires_grad))


def repeat_rows(conditioning: Conditioning | None, k: int) -> Conditioning | None:
    """The conditioning of b rows stacked k times (row i·b + r is row r), as a U-Net call over k steps needs."""
    return None if conditioning is None else conditioning.map(lambda t: t.repeat(k, *[1] * (t.ndim - 1)))


@dataclass
class DDPOConfig:
    """DDPO (Black et al. 2023), TexForce's algorithm: PPO's clipped ratio over the recorded denoising chains."""

    num_inner_epochs: int = option(1, "PPO passes over each epoch's samples", bounds=">= 1")
    timestep_fraction: float = option(
        1.0, "fraction of each chain's steps trained on (a random subset)", bounds="(0, 1]"
    )
    clip_range: float = option(1e-4, "PPO's clip range of the probability ratio", bounds="> 0")
    adv_clip_max: float = option(10.0, "advantages are clipped to ± this", bounds="> 0")
    use_cfg: bool = option(True, "classifier-free guidance in the update, as at sampling")
    timesteps_per_call: int = option(
        1,
        "trained timesteps per U-Net call: k of each sample's steps as one batch of k × micro-batch (the same loss "
        "and gradient as one call per step; faster on the CPU, k times the activation memory)",
        bounds=">= 1",
    )
    gradient_checkpointing: bool = option(
        False,
        "per-block checkpointing of the denoiser in the update (its own enable_gradient_checkpointing): only each "
        "block's input is kept, each block is recomputed in the backward pass (FLUX, SD3.5 Large at 1024²)",
    )
    kl_coef: float = option(
        0.0,
        "β of a KL penalty to the frozen policy (adapters off) on each trained step, ‖μθ − μref‖² / 2σ² averaged over "
        "latent dimensions (Flow-GRPO uses 0.01–0.04): keeps the policy near the base; costs one more U-Net call",
        bounds=">= 0",
    )
    window_start: int = option(
        0, "first step (0-based) of the SDE window: the steps drawn at sample.eta", bounds=">= 0"
    )
    window_size: int = option(
        0,
        "steps in the SDE window (0: to the end of the chain); the others are deterministic DDIM steps (eta 0) and "
        "are never trained on, which removes their noise from the policy gradient (MixGRPO)",
        bounds=">= 0",
    )

    def window(self, num_steps: int) -> range:
        """The chain's steps that are sampled stochastically and trained on."""
        end = num_steps if self.window_size == 0 else self.window_start + self.window_size
        return range(self.window_start, min(end, num_steps))

    def num_train_timesteps(self, num_steps: int) -> int:
        """How many of the window's sampled steps (all the chain's by default) each sample is trained on."""
        return max(1, int(len(self.window(num_steps)) * self.timestep_fraction))


@dataclass
class AdvantageConfig:
    """How DDPO turns rewards into advantages."""

    mode: str = option(
        "per_prompt",
        "per_prompt: per-prompt stat tracking; batch: normalised over the batch; group: GRPO-style groups",
        choices=("per_prompt", "batch", "group"),
    )
    buffer_size: int = option(32, "per_prompt: rewards kept per prompt across epochs", bounds=">= 1")
    min_count: int = option(
        16, "per_prompt: below this many (<= buffer_size), the batch's statistics are used", bounds=">= 1"
    )
    group_size: int = option(
        4, "group: images per prompt per epoch, normalised within their group (divides the epoch)", bounds=">= 2"
    )
    group_scale: str = option(
        "group",
        "group: what the centred rewards are divided by: each group's std (GRPO) or the whole batch's (Dr. GRPO)",
        choices=("group", "batch"),
    )


class DDPO:
    """PPO's clipped surrogate over the chains of each epoch (config sections `ddpo` and `advantage`)."""

    sections: ClassVar[dict[str, type]] = {"ddpo": DDPOConfig, "advantage": AdvantageConfig}

    @staticmethod
    def check_config(config: SharedConfig, ddpo: DDPOConfig, advantage: AdvantageConfig) -> None:
        """What DDPO needs of the rest of the config."""
        eta, samples = config.sample.eta, config.samples_per_epoch_per_device
        check(eta > 0, f"sample.eta must be > 0 for DDPO (a deterministic step has no log-probability), got {eta}")
        check(
            advantage.mode != "group" or samples % advantage.group_size == 0,
            f"advantage.group_size ({advantage.group_size}) must be >= 2 and divide the samples per epoch ({samples})",
        )
        check(
            advantage.min_count <= advantage.buffer_size, "advantage.min_count must be in [1, advantage.buffer_size]"
        )
        steps = config.sample.num_steps
        check(
            ddpo.window_start < steps,
            f"ddpo.window_start ({ddpo.window_start}) must be a step of the chain (sample.num_steps = {steps})",
        )

    def __init__(self, context: TrainingContext, ddpo: DDPOConfig, advantage: AdvantageConfig) -> None:
        self.trainer, self.ddpo, self.advantage = context, ddpo, advantage
        c = context.config
        check_schedule(context.policy.scheduler, c.sample.num_steps)  # a zero-variance step has no log-prob
        self.stat_tracker = PerPromptStatTracker(advantage.buffer_size, advantage.min_count)
        self.window = ddpo.window(c.sample.num_steps)
        self.num_train_timesteps = ddpo.num_train_timesteps(c.sample.num_steps)
        micro_batches = c.samples_per_epoch_per_device // c.train.batch_size_per_device
        self.steps_per_epoch = ddpo.num_inner_epochs * micro_batches // c.train.gradient_accumulation_steps
        if ddpo.gradient_checkpointing:
            context.policy.enable_gradient_checkpointing()

    def run_epoch(self, epoch: int, generator: torch.Generator) -> EpochStats:
        t = self.trainer
        timer = time.perf_counter()
        # SAMPLING: trajectories of the current policy (this process's share of the epoch's batches)
        trajectory = self.sample(t.process_share(self.epoch_prompts(generator)), t.batch_generators(epoch))
        sampled = time.perf_counter()
        kill_point("sample", epoch + 1)
        # REWARDS, gathered from every process with the chains' (sample, step) pairs each process will train on
        # (the update's shuffles are drawn first to know them); a NaN/inf score drops its sample
        reward = gather_reward(t.dist, t.score(trajectory.images, trajectory.prompts))
        local_images = trajectory.images
        shuffles = self.shuffles(len(reward.total), generator)
        trajectory = gather_trajectory(t.dist, trajectory, self.wanted(shuffles, trajectory.latents.shape[1]))
        finite = t.finite_rewards(reward.total, epoch + 1)
        rewarded = time.perf_counter()
        kill_point("reward", epoch + 1)
        # ADVANTAGES: dropped samples get 0, so they add nothing to the update
        advantages = self.advantages(trajectory.prompts, reward.total.numpy(), finite)
        # TRAINING: PPO on the recorded chains
        update = self.update(trajectory, advantages, shuffles)
        trained = time.perf_counter()
        return EpochStats(
            rewards=reward.total.numpy(),
            components={k: v.numpy() for k, v in reward.components.items()},
            update=update,
            faults={"dropped_samples": int((~finite).sum()), "skipped_steps": int(update.pop("skipped_steps"))},
            seconds={"sample": sampled - timer, "reward": rewarded - sampled, "train": trained - rewarded},
            images=local_images[:GRID_SIZE],
            prompts=trajectory.prompts[:GRID_SIZE],
        )

    # ------------------------------------------------------------------ the steps
    def epoch_prompts(self, generator: torch.Generator) -> list[str]:
        """The epoch's prompts (every process's); with grouped advantages, `group_size` in a row of each."""
        a = self.advantage
        return self.trainer.draw_prompts(generator, a.group_size if a.mode == "group" else 1)

    def sample(self, prompts: list[str], generators: list[torch.Generator]) -> Trajectory:
        """The chains of `prompts`, batch i drawing its noise from `generators[i]`, under a progress bar."""
        s = self.trainer.config.sample
        task = self.trainer.log.progress("sampling", len(prompts) // s.batch_size_per_device * s.num_steps)
        trajectory = self.trainer.policy.sample(prompts, generators, task, self.window)
        self.trainer.log.done(task)
        return trajectory

    def advantages(self, prompts: list[str], rewards: np.ndarray, finite: np.ndarray) -> torch.Tensor:
        """Advantages (N,) of the finite rewards; 0 for dropped samples (their PPO loss is then 0)."""
        kept_prompts, kept = [p for p, ok in zip(prompts, finite, strict=True) if ok], rewards[finite]
        values = np.zeros(len(prompts))
        mode = self.advantage.mode
        if mode == "per_prompt":
            values[finite] = self.stat_tracker.update(kept_prompts, kept)
        elif mode == "group":
            values[finite] = group_advantages(kept_prompts, kept, self.advantage.group_scale)
        else:
            values[finite] = batch_advantages(kept)
        return torch.as_tensor(values, dtype=torch.float32)

    def shuffles(self, num_samples: int, generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each inner epoch's sample order (N,) and step_order (N, K): each sample trains on its own random K of
        the window's steps. The same on every process (the epoch's generator)."""
        window, drawn = torch.tensor(self.window), []
        for _ in range(self.ddpo.num_inner_epochs):
            order = torch.randperm(num_samples, generator=generator)
            draws = [torch.randperm(len(window), generator=generator) for _ in range(num_samples)]
            drawn.append((order, window[torch.stack(draws)[:, : self.num_train_timesteps]]))
        return drawn

    def wanted(self, shuffles: list[tuple[torch.Tensor, torch.Tensor]], num_latents: int) -> torch.Tensor:
        """Which latents (processes, N, T+1) each process's micro-batches read: a trained step and the one after."""
        t, micro = self.trainer, self.trainer.config.train.batch_size_per_device
        num_samples = len(shuffles[0][0])
        wanted = torch.zeros((t.dist.num_processes, num_samples, num_latents), dtype=torch.bool)
        for process in range(t.dist.num_processes):
            for order, step_order in shuffles:
                for j in t.my_micro_batches(num_samples // micro, process):
                    rows = order[j * micro : (j + 1) * micro, None]
                    wanted[process, rows, step_order[rows[:, 0]]] = True
                    wanted[process, rows, step_order[rows[:, 0]] + 1] = True
        return wanted

    def update(
        self, trajectory: Trajectory, advantages: torch.Tensor, shuffles: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> dict[str, float]:
        """PPO over the epoch's (global) samples: shuffled micro-batches (`shuffles`), each sample on its own random
        subset of timesteps. With several processes, each optimizer step's micro-batches are split between them."""
        t, c = self.trainer, self.trainer.config
        advantages = advantages.clamp(-self.ddpo.adv_clip_max, self.ddpo.adv_clip_max)
        history: dict[str, list[float]] = defaultdict(list)
        micro = c.train.batch_size_per_device
        mine = t.my_micro_batches(len(trajectory.prompts) // micro)
        task = t.log.progress("training", self.ddpo.num_inner_epochs * len(mine))
        for order, step_order in shuffles:
            for index, j in enumerate(mine):
                rows = order[j * micro : (j + 1) * micro]
                for key, value in self.train_micro_batch(trajectory, advantages, rows, step_order[rows]).items():
                    history[key].append(value)
                if (index + 1) % c.train.gradient_accumulation_steps == 0:
                    norm = t.optimizer_step()
                    history["grad_norm" if np.isfinite(norm) else "skipped_steps"].append(norm)
                    kill_point("update", t.epoch)
                task()
        t.log.done(task)
        skipped = len(history.pop("skipped_steps", []))
        means = mean_over_processes(t.dist, {key: float(np.mean(values)) for key, values in history.items()})
        return {**means, "skipped_steps": skipped}

    def train_micro_batch(
        self, trajectory: Trajectory, advantages: torch.Tensor, rows: torch.Tensor, steps: torch.Tensor
    ) -> dict[str, float]:
        """Accumulate gradients of the PPO loss of `rows` (b,) on their steps (b, K).

        The prompts are encoded once; the loss of each timestep is back-propagated into the embeddings,
        whose summed gradient then makes a single backward pass through the text encoder. This equals
        re-encoding per timestep (tested), at a fraction of the cost. `ddpo.timesteps_per_call` = k stacks k of
        each sample's steps into one U-Net batch of k·b (the sum of the k steps' losses: the same gradient, tested).
        With `ddpo.kl_coef` β > 0 each step's loss adds β·KL to the frozen policy, whose prediction runs without a
        graph.
        """
        c, policy = self.trainer.config, self.trainer.policy
        device = policy.device
        scale = 1.0 / (steps.shape[1] * c.train.gradient_accumulation_steps)
        text_trainable = c.text_lora.use
        with torch.set_grad_enabled(text_trainable):
            embeds = policy.encode(trajectory.prompt_ids[rows])
            negative = policy.negative_embeds(len(rows)) if self.ddpo.use_cfg and policy.uses_guidance else None
        # the conditioning's tensors as leaves: their gradients, summed over the steps, cross the encoders once
        leaves = [gradient_leaves(e, text_trainable) for e in (embeds, negative)]
        reference = self.reference_conditioning(trajectory.prompt_ids[rows]) if self.ddpo.kl_coef > 0 else None
        totals: dict[str, float] = defaultdict(float)
        num_steps = steps.shape[1]
        for start in range(0, num_steps, self.ddpo.timesteps_per_call):
            chunk = steps[:, start : start + self.ddpo.timesteps_per_call]  # (b, k): row i·b + r is sample r's i-th
            k = chunk.shape[1]
            step, batch_rows = chunk.T.reshape(-1), rows.repeat(k)
            stacked = [repeat_rows(e, k) for e in leaves]
            latents = trajectory.latents[batch_rows, step].to(device)
            next_latents = trajectory.latents[batch_rows, step + 1].to(device)
            timesteps = trajectory.timesteps[step].to(device)
            noise_pred = policy.noise_predictor(stacked[0], stacked[1])(latents, timesteps)
            mean, std = step_gaussian(policy.scheduler, noise_pred, timesteps, latents, c.sample.eta)
            stats = ppo_clipped_loss(
                gaussian_log_prob(next_latents, mean, std),
                trajectory.log_probs[batch_rows, step].to(device),
                advantages[batch_rows].to(device),
                self.ddpo.clip_range,
            )
            loss, logged = stats.loss, {key: getattr(stats, key) for key in ("loss", "approx_kl", "clipfrac", "ratio")}
            if reference is not None:
                logged["kl_to_frozen"] = step_kl(
                    mean, self.reference_mean(reference, k, latents, timesteps), std
                ).mean()
                loss = loss + self.ddpo.kl_coef * logged["kl_to_frozen"]
            (loss * scale * k).backward()  # the mean over k·b rows, times k: the sum of k steps' means
            for key, value in logged.items():
                totals[key] += value.item() * k / num_steps
        pairs = [
            (tensor, leaf.grad.to(tensor.dtype))
            for e, leaves_of_e in zip((embeds, negative), leaves, strict=True)
            if e is not None
            for tensor, leaf in zip(e.tensors(), leaves_of_e.tensors(), strict=True)
            if leaf.grad is not None
        ]
        if pairs:
            torch.autograd.backward(*zip(*pairs, strict=True))
        return dict(totals)

    @torch.no_grad()
    def reference_conditioning(self, prompt_ids: torch.Tensor) -> Reference:
        """The frozen policy's conditioning (and negative) of a micro-batch, for the KL penalty."""
        policy = self.trainer.policy
        with policy.frozen():
            negative = policy.negative_embeds(len(prompt_ids)) if self.ddpo.use_cfg and policy.uses_guidance else None
            return policy.encode(prompt_ids), negative

    @torch.no_grad()
    def reference_mean(
        self, reference: Reference, k: int, latents: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """The frozen policy's step mean for the micro-batch's rows stacked `k` times (as the trained call)."""
        policy, eta = self.trainer.policy, self.trainer.config.sample.eta
        embeds, negative = (repeat_rows(e, k) for e in reference)
        with policy.frozen():
            noise_pred = policy.noise_predictor(embeds, negative)(latents, timesteps)
        return step_gaussian(policy.scheduler, noise_pred, timesteps, latents, eta)[0]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"stat_tracker": self.stat_tracker.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stat_tracker.load_state_dict(state["stat_tracker"])
