"""DDPOTrainer: TexForce's training loop — sample → reward → advantage → PPO update — on one page.

The text encoder (through its LoRA) is the policy: every update re-encodes the prompts with gradients,
so the PPO loss on the denoising chain reaches it. An optional U-Net LoRA trains alone or jointly.
Machinery (run folder, checkpoints, metrics, progress) lives in `run.py` and `checkpoint.py`.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from diffusers.optimization import get_scheduler
from peft.utils import set_peft_model_state_dict
from safetensors.torch import load_file

from texforce.checkpoint import kill_point, load_checkpoint_state, rng_state, set_rng_state
from texforce.config import RunConfig
from texforce.distributed import (
    average_gradients,
    batch_generator,
    gather_reward,
    gather_trajectory,
    mean_over_processes,
    process_state,
)
from texforce.errors import TexforceError
from texforce.export import PEFT_PREFIX, PEFT_WEIGHTS, save_adapters
from texforce.models import add_lora, prepare_pipeline, resolve_device
from texforce.ppo import PerPromptStatTracker, batch_advantages, ppo_clipped_loss
from texforce.prompts import load_prompt_set
from texforce.rewards import RewardOutput, build_reward
from texforce.run import RunLogger
from texforce.sampling import (
    Trajectory,
    check_schedule,
    ddim_step_with_logprob,
    decode_latents,
    guided_noise_fn,
    sample_latents,
)


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    """Token ids (B, L), padded to the tokenizer's full length as Stable Diffusion does."""
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The epoch's own random stream (prompts, noise, shuffles): a resumed run replays it exactly."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


@dataclass
class EpochStats:
    """One epoch for the logs: rewards (N,) and components (N,) as scored (NaN/inf included), PPO means,
    phase seconds, and fault counts (dropped samples, skipped optimizer steps)."""

    rewards: np.ndarray
    components: dict[str, np.ndarray]
    update: dict[str, float]
    seconds: dict[str, float]
    faults: dict[str, int]


class DDPOTrainer:
    """Lifecycle: `setup()` → `train()` (resumable) → adapters in `run_dir/lora`."""

    def __init__(self, config: RunConfig, logger: RunLogger) -> None:
        self.config = config
        self.log = logger

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        c = self.config
        self.dist = process_state(c.model.device)  # one process, or one of `accelerate launch`'s
        self.device = self.dist.device if self.dist.num_processes > 1 else resolve_device(c.model.device)
        torch.manual_seed(c.seed)
        self.pipe = prepare_pipeline(c.model, self.device)
        self.scheduler = self.pipe.scheduler
        check_schedule(self.scheduler, c.sample.num_steps)
        self.text_encoder, self.unet = self.pipe.text_encoder, self.pipe.unet
        params = []
        if c.text_lora.use:
            params.append(
                {"params": add_lora(self.text_encoder, c.text_lora, c.seed), "lr": c.text_lora.learning_rate}
            )
        if c.unet_lora.use:
            params.append({"params": add_lora(self.unet, c.unet_lora, c.seed + 1), "lr": c.unet_lora.learning_rate})
        self.trainable = [p for group in params for p in group["params"]]
        self.optimizer = torch.optim.AdamW(
            params,
            betas=(c.train.adam_beta1, c.train.adam_beta2),
            weight_decay=c.train.adam_weight_decay,
            eps=c.train.adam_epsilon,
        )
        micro_batches = c.samples_per_epoch_per_device // c.train.batch_size_per_device
        self.steps_per_epoch = c.train.num_inner_epochs * micro_batches // c.train.gradient_accumulation_steps
        self.lr_scheduler = get_scheduler(
            "cosine" if c.train.lr_schedule == "cosine" else "constant_with_warmup",
            self.optimizer,
            num_warmup_steps=c.train.lr_warmup_steps,
            num_training_steps=max(1, self.steps_per_epoch * c.train.num_epochs),
        )
        self.reward_fn = build_reward(c.reward, self.device, self.pipe.unet.dtype)
        self.prompts = load_prompt_set(c.prompts.train, c.prompts.eval)
        self.stat_tracker = PerPromptStatTracker(c.advantage.buffer_size, c.advantage.min_count)
        self.negative_ids = tokenize(self.pipe.tokenizer, [c.sample.negative_prompt])
        self.base_negative: torch.Tensor | None = None  # (1, L, D), the negative prompt off the LoRA
        self.start_epoch, self.global_step, self.epoch = 0, 0, 0
        self.log.describe(c, self.device, self.steps_per_epoch, sum(p.numel() for p in self.trainable))

    # ------------------------------------------------------------------ the loop
    def train(self) -> None:
        c = self.config
        for epoch in range(self.start_epoch, c.train.num_epochs):
            self.epoch = epoch + 1
            generator = epoch_generator(c.seed, epoch)
            timer = time.perf_counter()
            # SAMPLING: trajectories of the current policy (this process's share of the epoch's batches)
            trajectory = self.sample(self.draw_prompts(generator), self.batch_generators(epoch))
            sampled = time.perf_counter()
            kill_point("sample", epoch + 1)
            # REWARDS, gathered with the chains from every process; a NaN/inf score drops its sample
            reward = gather_reward(self.dist, self.score(trajectory))
            trajectory = gather_trajectory(self.dist, trajectory)
            finite = self.finite_rewards(reward.total, epoch + 1)
            rewarded = time.perf_counter()
            kill_point("reward", epoch + 1)
            # ADVANTAGES: dropped samples get 0, so they add nothing to the update
            advantages = self.advantages(trajectory.prompts, reward.total.numpy(), finite)
            # TRAINING: PPO on the recorded chains
            update = self.update(trajectory, advantages, generator)
            trained = time.perf_counter()
            stats = EpochStats(
                rewards=reward.total.numpy(),
                components={k: v.numpy() for k, v in reward.components.items()},
                update=update,
                faults={"dropped_samples": int((~finite).sum()), "skipped_steps": int(update.pop("skipped_steps"))},
                seconds={
                    "sample": sampled - timer,
                    "reward": rewarded - sampled,
                    "train": trained - rewarded,
                },
            )
            self.log.epoch(epoch + 1, stats, trajectory, self.lr_scheduler.get_last_lr())
            if (epoch + 1) % c.checkpoint_every == 0 or epoch + 1 == c.train.num_epochs:
                self.log.checkpoint(epoch + 1, self.state_dict(epoch + 1), self.save_adapters)

    # ------------------------------------------------------------------ the four steps
    def draw_prompts(self, generator: torch.Generator) -> list[str]:
        """This process's prompts: its slice of the whole epoch's draw (the same on every process)."""
        train, per_device = self.prompts.train, self.config.samples_per_epoch_per_device
        picks = torch.randint(len(train), (per_device * self.dist.num_processes,), generator=generator)
        first = per_device * self.dist.process_index
        return [train[i] for i in picks[first : first + per_device].tolist()]

    def batch_generators(self, epoch: int) -> list[torch.Generator]:
        """One random stream per sample batch, keyed by its global index: the process count does not matter."""
        num_batches = self.config.sample.num_batches_per_epoch
        first = num_batches * self.dist.process_index
        return [batch_generator(self.config.seed, epoch, first + k) for k in range(num_batches)]

    def encode(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings (B, L, D) from the text encoder, LoRA included."""
        return self.text_encoder(prompt_ids.to(self.device))[0]

    def negative_embeds(self, batch_size: int) -> torch.Tensor:
        """Embeddings of the negative prompt, through the LoRA unless `train.use_lora_for_negative` is off.

        Off the LoRA (or with no text-encoder LoRA) they are a constant of the run, encoded once.
        """
        if self.config.train.use_lora_for_negative and self.config.text_lora.use:
            return self.encode(self.negative_ids.expand(batch_size, -1))
        if self.base_negative is None:
            with torch.no_grad():
                if self.config.text_lora.use:
                    self.text_encoder.disable_adapters()
                try:
                    self.base_negative = self.encode(self.negative_ids)
                finally:
                    if self.config.text_lora.use:
                        self.text_encoder.enable_adapters()
        return self.base_negative.expand(batch_size, -1, -1)

    @torch.no_grad()
    def sample(
        self, prompts: list[str], generators: torch.Generator | list[torch.Generator], progress: bool = True
    ) -> Trajectory:
        """Sample `len(prompts)` chains in batches of `sample.batch_size_per_device`, batch i drawing its noise
        from `generators[i]` (or all from one generator)."""
        s = self.config.sample
        batches = []
        resolution = s.resolution or self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        latent_size = resolution // self.pipe.vae_scale_factor
        channels = self.pipe.unet.config.in_channels
        task = self.log.progress("sampling", len(prompts) // s.batch_size_per_device * s.num_steps if progress else 0)
        for index, start in enumerate(range(0, len(prompts), s.batch_size_per_device)):
            generator = generators[index] if isinstance(generators, list) else generators
            batch = prompts[start : start + s.batch_size_per_device]
            ids = tokenize(self.pipe.tokenizer, batch)
            predict = guided_noise_fn(self.unet, self.encode(ids), self.negative_embeds(len(batch)), s.guidance_scale)
            noise = torch.randn((len(batch), channels, latent_size, latent_size), generator=generator)
            latents, log_probs, timesteps = sample_latents(
                predict,
                self.scheduler,
                noise.to(self.device, self.unet.dtype),
                s.num_steps,
                s.eta,
                generator,
                task,
            )
            images = decode_latents(self.pipe.vae, latents[:, -1])
            batches.append((batch, ids, latents.cpu(), log_probs.cpu(), timesteps.cpu(), images.cpu()))
        self.log.done(task)
        return Trajectory(
            prompts=[p for b in batches for p in b[0]],
            prompt_ids=torch.cat([b[1] for b in batches]),
            latents=torch.cat([b[2] for b in batches]),
            log_probs=torch.cat([b[3] for b in batches]),
            timesteps=batches[0][4],
            images=torch.cat([b[5] for b in batches]),
        )

    def score(self, trajectory: Trajectory) -> RewardOutput:
        """Rewards (N,) of this process's samples, scored in sampling-sized chunks under a progress bar."""
        chunk, count = self.config.sample.batch_size_per_device, len(trajectory.prompts)
        task = self.log.progress("scoring", -(-count // chunk))
        outputs = []
        for start in range(0, count, chunk):
            outputs.append(
                self.reward_fn(trajectory.images[start : start + chunk], trajectory.prompts[start : start + chunk])
            )
            task()
        self.log.done(task)
        return RewardOutput(
            total=torch.cat([o.total for o in outputs]),
            components={name: torch.cat([o.components[name] for o in outputs]) for name in outputs[0].components},
        )

    def finite_rewards(self, rewards: torch.Tensor, epoch: int) -> np.ndarray:
        """Mask (N,) of usable rewards. NaN/inf ones are dropped with a warning; above
        `train.max_nonfinite_fraction` of the batch the run stops here, before the update touches the weights."""
        finite = torch.isfinite(rewards).numpy()
        dropped, limit = int((~finite).sum()), self.config.train.max_nonfinite_fraction
        if dropped > limit * len(finite):
            raise TexforceError(
                f"epoch {epoch}: {dropped} of {len(finite)} rewards are NaN/inf (more than "
                f"train.max_nonfinite_fraction={limit}); stopped before the update, the last checkpoint is intact"
            )
        if dropped:
            self.log.warn(f"epoch {epoch}: dropped {dropped} of {len(finite)} samples with a NaN/inf reward")
        return finite

    def advantages(self, prompts: list[str], rewards: np.ndarray, finite: np.ndarray) -> torch.Tensor:
        """Advantages (N,) of the finite rewards; 0 for dropped samples (their PPO loss is then 0)."""
        kept_prompts, kept = [p for p, ok in zip(prompts, finite, strict=True) if ok], rewards[finite]
        values = np.zeros(len(prompts))
        if self.config.advantage.mode == "per_prompt":
            values[finite] = self.stat_tracker.update(kept_prompts, kept)
        else:
            values[finite] = batch_advantages(kept)
        return torch.as_tensor(values, dtype=torch.float32)

    def update(self, trajectory: Trajectory, advantages: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        """PPO over the epoch's (global) samples: shuffled micro-batches, each on its own random subset of
        timesteps. With several processes, each optimizer step's micro-batches are split between them."""
        c = self.config
        num_samples, num_steps = trajectory.log_probs.shape
        num_train_steps = c.num_train_timesteps
        advantages = advantages.clamp(-c.train.adv_clip_max, c.train.adv_clip_max)
        history: dict[str, list[float]] = defaultdict(list)
        micro, accumulation = c.train.batch_size_per_device, c.train.gradient_accumulation_steps
        world, rank = self.dist.num_processes, self.dist.process_index
        # micro-batch j belongs to optimizer step j // (accumulation · world); process r takes the r-th run of it
        mine = [j for j in range(num_samples // micro) if (j // accumulation) % world == rank]
        task = self.log.progress("training", c.train.num_inner_epochs * len(mine))
        for _ in range(c.train.num_inner_epochs):
            order = torch.randperm(num_samples, generator=generator)
            # step_order (N, K): each sample trains on its own random K of the T steps
            step_order = torch.stack([torch.randperm(num_steps, generator=generator) for _ in range(num_samples)])
            step_order = step_order[:, :num_train_steps]
            for index, j in enumerate(mine):
                rows = order[j * micro : (j + 1) * micro]
                for key, value in self.train_micro_batch(trajectory, advantages, rows, step_order[rows]).items():
                    history[key].append(value)
                if (index + 1) % c.train.gradient_accumulation_steps == 0:
                    norm = self.optimizer_step()
                    history["grad_norm" if np.isfinite(norm) else "skipped_steps"].append(norm)
                    kill_point("update", self.epoch)
                task()
        self.log.done(task)
        skipped = len(history.pop("skipped_steps", []))
        means = mean_over_processes(self.dist, {key: float(np.mean(values)) for key, values in history.items()})
        return {**means, "skipped_steps": skipped}

    @torch.no_grad()
    def evaluate(self, prompts: tuple[str, ...]) -> tuple[float, torch.Tensor]:
        """Mean reward over `prompts` × `eval.num_seeds` fixed seeds, and the images of the first seed."""
        e = self.config.eval
        rewards, first_images = [], None
        for seed in range(e.num_seeds):
            trajectory = self.sample(list(prompts), torch.Generator().manual_seed(e.seed + seed), progress=False)
            rewards.append(self.reward_fn(trajectory.images, trajectory.prompts).total)
            first_images = trajectory.images if first_images is None else first_images
        return float(torch.cat(rewards).mean()), first_images

    # ------------------------------------------------------------------ update internals
    def train_micro_batch(
        self, trajectory: Trajectory, advantages: torch.Tensor, rows: torch.Tensor, steps: torch.Tensor
    ) -> dict[str, float]:
        """Accumulate gradients of the PPO loss of `rows` (b,) on their steps (b, K).

        The prompts are encoded once; the loss of each timestep is back-propagated into the embeddings,
        whose summed gradient then makes a single backward pass through the text encoder. This equals
        re-encoding per timestep (tested), at a fraction of the cost.
        """
        c = self.config
        scale = 1.0 / (steps.shape[1] * c.train.gradient_accumulation_steps)
        text_trainable = c.text_lora.use
        with torch.set_grad_enabled(text_trainable):
            embeds = self.encode(trajectory.prompt_ids[rows])
            negative = self.negative_embeds(len(rows)) if c.train.use_cfg else None
        leaves = [
            e.detach().requires_grad_(text_trainable and e.requires_grad) if e is not None else None
            for e in (embeds, negative)
        ]
        predict = guided_noise_fn(self.unet, leaves[0], leaves[1], c.sample.guidance_scale)
        totals: dict[str, float] = defaultdict(float)
        for j in range(steps.shape[1]):
            step = steps[:, j]
            latents = trajectory.latents[rows, step].to(self.device)
            next_latents = trajectory.latents[rows, step + 1].to(self.device)
            timesteps = trajectory.timesteps[step].to(self.device)
            noise_pred = predict(latents, timesteps)
            _, log_probs = ddim_step_with_logprob(
                self.scheduler, noise_pred, timesteps, latents, c.sample.eta, prev_sample=next_latents
            )
            stats = ppo_clipped_loss(
                log_probs,
                trajectory.log_probs[rows, step].to(self.device),
                advantages[rows].to(self.device),
                c.train.clip_range,
            )
            (stats.loss * scale).backward()
            for key in ("loss", "approx_kl", "clipfrac", "ratio"):
                totals[key] += getattr(stats, key).item() / steps.shape[1]
        pairs = [
            (e, leaf.grad)
            for e, leaf in zip((embeds, negative), leaves, strict=True)
            if leaf is not None and leaf.grad is not None
        ]
        if pairs:
            torch.autograd.backward(*zip(*pairs, strict=True))
        return dict(totals)

    def optimizer_step(self) -> float:
        """Clip, step, schedule. A non-finite gradient is dropped (never reaches the weights) and counted."""
        average_gradients(self.dist, self.trainable)
        norm = torch.nn.utils.clip_grad_norm_(self.trainable, self.config.train.max_grad_norm)
        if torch.isfinite(norm):
            self.optimizer.step()
        else:
            self.log.warn(f"non-finite gradient norm at step {self.global_step}; update skipped")
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        return float(norm)

    # ------------------------------------------------------------------ state
    def save_adapters(self, folder) -> None:
        save_adapters(
            folder,
            self.text_encoder if self.config.text_lora.use else None,
            self.unet if self.config.unet_lora.use else None,
            self.config.model.base,
        )

    def state_dict(self, epoch: int) -> dict:
        return {
            "epoch": epoch,
            "global_step": self.global_step,
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "stat_tracker": self.stat_tracker.state_dict(),
            "rng": rng_state(),
        }

    def load_checkpoint(self, checkpoint) -> None:
        """Restore adapters, optimizer, LR schedule, stat tracker, RNG states and counters."""
        state = load_checkpoint_state(checkpoint)
        for name, module, use in (
            ("text_encoder", self.text_encoder, self.config.text_lora.use),
            ("unet", self.unet, self.config.unet_lora.use),
        ):
            if use:
                weights = load_file(checkpoint / "lora" / name / PEFT_WEIGHTS)
                set_peft_model_state_dict(module, {k.removeprefix(PEFT_PREFIX): v for k, v in weights.items()})
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.stat_tracker.load_state_dict(state["stat_tracker"])
        set_rng_state(state["rng"])
        self.start_epoch, self.global_step = state["epoch"], state["global_step"]
