"""Direct reward backprop (DRaFT-K, Clark et al. 2024; AlignProp, Prabhudesai et al. 2023): the official TexForce
release's path for SD-Turbo and SDXL-Turbo, "with ImageReward feedback through direct back-propagation".

Per micro-batch: sample with the current policy (deterministic DDIM by default), keeping the graph of the last K
steps only; decode with the VAE; score with a differentiable reward; back-propagate −reward into the LoRA weights.
The embeddings condition every step, so the earlier steps use them too, without a graph: that truncation is
DRaFT's bias-for-memory trade. K = 1 is DRaFT-1; `random_truncation` draws K per micro-batch (AlignProp).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from texforce.config.schema import check, option
from texforce.observe.runlog import EpochStats
from texforce.prompts.styles import get_style, styled
from texforce.rewards import RewardOutput, differentiable_rewards, parse_reward_spec
from texforce.sampling import decode, denoise
from texforce.training.checkpoint import kill_point
from texforce.training.distributed import batch_generator, gather_reward, mean_over_processes

if TYPE_CHECKING:
    from texforce.algorithms.base import TrainingContext
    from texforce.config import SharedConfig

GRID_SIZE = 16


@dataclass
class BackpropConfig:
    """Direct reward back-propagation (DRaFT-K, AlignProp): the reward's gradient flows through the VAE decoder
    and the last `num_grad_steps` sampling steps into the LoRA weights; earlier steps run without a graph."""

    num_grad_steps: int = option(
        1, "K: how many of the last sampling steps keep their graph (at most sample.num_steps)", bounds=">= 1"
    )
    random_truncation: bool = option(False, "AlignProp: K drawn uniformly from 1..num_grad_steps per micro-batch")
    gradient_checkpointing: bool = option(
        True,
        "per-block checkpointing of the denoiser and the VAE decoder (the models' own enable_gradient_checkpointing): "
        "only each block's input is kept, each block is recomputed in the backward pass",
    )
    anchor_coef: float = option(
        0.0,
        "λ of an anchor that keeps prompts written in `anchor_style` where the frozen encoder puts them: "
        "λ · ‖E(p) − E₀(p)‖² / ‖E₀(p)‖² of the batch's prompts in that style and of the negative prompt, so that "
        "tuning plain prompts does not move prompts that are already written well",
        bounds=">= 0",
    )
    anchor_negative: bool = option(
        True, "the anchor also holds the negative prompt (when guidance encodes it through the LoRA)"
    )
    anchor_style: str = option(
        "engineered", "the prompt style (prompts/styles.py: a name or a {prompt} template) the anchor holds"
    )


class RewardBackprop:
    """Gradient ascent on the reward of freshly sampled images (config section `backprop`)."""

    sections: ClassVar[dict[str, type]] = {"backprop": BackpropConfig}

    @staticmethod
    def check_config(config: SharedConfig, backprop: BackpropConfig) -> None:
        """What direct backprop needs of the rest of the config: K steps to keep, a differentiable reward."""
        num_steps = config.sample.num_steps
        check(
            backprop.num_grad_steps <= num_steps,
            f"backprop.num_grad_steps must be in [1, sample.num_steps={num_steps}], got {backprop.num_grad_steps}",
        )
        if backprop.anchor_coef:
            get_style(backprop.anchor_style)  # a one-line error for an unknown style
        differentiable = differentiable_rewards()
        fixed = [name for name, weight in parse_reward_spec(config.reward) if name not in differentiable and weight]
        check(
            not fixed,
            f"reward {', '.join(fixed)} is not differentiable, so train.algorithm=backprop cannot use it; "
            f"differentiable rewards: {', '.join(differentiable)} (or train.algorithm=ddpo)",
        )

    def __init__(self, context: TrainingContext, backprop: BackpropConfig) -> None:
        self.trainer, self.backprop = context, backprop
        c = context.config
        micro_batches = c.samples_per_epoch_per_device // c.train.batch_size_per_device
        self.steps_per_epoch = micro_batches // c.train.gradient_accumulation_steps
        if backprop.gradient_checkpointing:
            context.policy.enable_gradient_checkpointing(vae=True)

    def run_epoch(self, epoch: int, generator: torch.Generator) -> EpochStats:
        t, c = self.trainer, self.trainer.config
        timer = time.perf_counter()
        prompts = t.draw_prompts(generator)  # the whole epoch's, every process's
        micro = c.train.batch_size_per_device
        num_micro_batches = len(prompts) // micro
        truncations = self.truncations(num_micro_batches, generator)  # K of each global micro-batch
        mine = t.my_micro_batches(num_micro_batches)
        history: dict[str, list[float]] = defaultdict(list)
        rewards, images = [], []
        task = t.log.progress("training", len(mine))
        for index, j in enumerate(mine):
            batch = prompts[j * micro : (j + 1) * micro]
            # SAMPLE (graph of the last K steps) → REWARD → BACKWARD, accumulated over micro-batches
            reward, pictures = self.train_micro_batch(batch, batch_generator(c.seed, epoch, j), truncations[j], epoch)
            if self.backprop.anchor_coef:
                history["anchor_distance"].append(self.anchor(t.judged(batch)))
            rewards.append(reward)
            images.append(pictures[: max(0, GRID_SIZE - sum(len(i) for i in images))])
            if (index + 1) % c.train.gradient_accumulation_steps == 0:
                norm = t.optimizer_step()
                history["grad_norm" if np.isfinite(norm) else "skipped_steps"].append(norm)
                kill_point("update", epoch + 1)
            task()
        t.log.done(task)
        reward = gather_reward(t.dist, RewardOutput.concat(rewards))
        finite = torch.isfinite(reward.total).numpy()
        history["num_grad_steps"] = [float(truncations[j]) for j in mine]
        skipped = len(history.pop("skipped_steps", []))
        update = mean_over_processes(t.dist, {key: float(np.mean(values)) for key, values in history.items()})
        return EpochStats(
            rewards=reward.total.numpy(),
            components={k: v.numpy() for k, v in reward.components.items()},
            update={**update, "loss": -float(np.mean(reward.total.numpy()[finite]))},
            faults={"dropped_samples": int((~finite).sum()), "skipped_steps": skipped},
            seconds={"train": time.perf_counter() - timer},
            images=torch.cat(images),
            prompts=[p for j in mine for p in prompts[j * micro : (j + 1) * micro]][:GRID_SIZE],
        )

    def truncations(self, num_micro_batches: int, generator: torch.Generator) -> list[int]:
        """K for each global micro-batch: `backprop.num_grad_steps`, or uniform in 1..K with random truncation."""
        b = self.backprop
        if not b.random_truncation:
            return [b.num_grad_steps] * num_micro_batches
        return (torch.randint(1, b.num_grad_steps + 1, (num_micro_batches,), generator=generator)).tolist()

    def train_micro_batch(
        self, prompts: list[str], generator: torch.Generator, num_grad_steps: int, epoch: int
    ) -> tuple[RewardOutput, torch.Tensor]:
        """Accumulate the gradient of −mean reward of one micro-batch; returns its rewards and images (CPU)."""
        t, c = self.trainer, self.trainer.config
        policy = t.policy  # per-block checkpointing, if configured, is on in the denoiser and the VAE themselves
        predict = policy.conditioned_predictor(policy.tokenize(prompts))  # graph into the LoRA weights
        noise = policy.initial_noise(len(prompts), generator)
        latents = denoise(
            predict,
            policy.scheduler,
            noise.to(policy.device),
            c.sample.num_steps,
            c.sample.eta,
            generator,
            grad_steps=num_grad_steps,
        )
        images = decode(policy.vae, latents)  # (b, 3, H, W), graph kept
        reward = t.reward_fn.differentiable(images, t.judged(prompts))
        finite = torch.isfinite(reward.total.detach()).cpu()
        t.finite_rewards(reward.total.detach().cpu(), epoch + 1)  # stops before the backward if too many are bad
        scale = 1.0 / (len(prompts) * c.train.gradient_accumulation_steps)
        (-reward.total[finite.to(reward.total.device)].sum() * scale).backward()
        total = reward.total.detach().float().cpu()
        return RewardOutput(total=total, components=reward.components), images.detach().cpu()

    def anchor(self, prompts: list[str]) -> float:
        """Accumulate the gradient of the anchor term; returns its distance: the relative squared distance
        ‖E(p) − E₀(p)‖² / ‖E₀(p)‖² to the frozen encoder's conditioning of these prompts in `anchor_style`, plus
        that of the negative prompt when it goes through the LoRA (through guidance it moves every image)."""
        t, b = self.trainer, self.backprop
        batches = [t.policy.tokenize(styled(prompts, get_style(b.anchor_style)))]
        if b.anchor_negative and t.policy.uses_guidance and t.config.train.use_lora_for_negative:
            batches.append(t.policy.negative_ids)
        distance = torch.zeros(())
        for ids in batches:
            with torch.no_grad(), t.policy.frozen():
                reference = t.policy.encode(ids).tensors()
            tuned = t.policy.encode(ids).tensors()
            for e, r in zip(tuned, reference, strict=True):
                distance = distance + (e - r).float().pow(2).mean().cpu() / r.float().pow(2).mean().cpu().clamp_min(
                    1e-12
                )
        (b.anchor_coef * distance / t.config.train.gradient_accumulation_steps).backward()
        return float(distance.detach())

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
