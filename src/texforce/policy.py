"""The policy: LoRA adapters on a frozen diffusion pipeline — on the text encoder (TexForce) and optionally the U-Net.

It turns prompts into embeddings (through the text-encoder LoRA, with gradients while training) and embeddings into
noise predictions. `sample` records DDPO's stochastic chains; `generate` renders final images (evaluation). Every
algorithm trains the same policy; only how its gradient is estimated differs (`texforce.algorithms`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from peft.utils import set_peft_model_state_dict
from safetensors.torch import load_file

from texforce.config import RunConfig
from texforce.export import PEFT_PREFIX, PEFT_WEIGHTS, save_adapters
from texforce.models import add_lora, prepare_pipeline
from texforce.sampling import (
    NoisePredictor,
    Trajectory,
    decode_latents,
    denoise,
    guided_noise_fn,
    sample_latents,
)


def tokenize(tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """Token ids (B, L), padded to the tokenizer's full length as Stable Diffusion does."""
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


class Policy:
    """The frozen pipeline of `config.model` on `device` with the configured LoRA adapters added (fp32)."""

    def __init__(self, config: RunConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.pipe = prepare_pipeline(config.model, device)
        self.scheduler = self.pipe.scheduler
        self.tokenizer, self.text_encoder = self.pipe.tokenizer, self.pipe.text_encoder
        self.unet, self.vae = self.pipe.unet, self.pipe.vae
        self.param_groups: list[dict] = []
        if config.text_lora.use:
            params = add_lora(self.text_encoder, config.text_lora, config.seed)
            self.param_groups.append({"params": params, "lr": config.text_lora.learning_rate})
        if config.unet_lora.use:
            params = add_lora(self.unet, config.unet_lora, config.seed + 1)
            self.param_groups.append({"params": params, "lr": config.unet_lora.learning_rate})
        self.trainable = [p for group in self.param_groups for p in group["params"]]
        self.negative_ids = tokenize(self.tokenizer, [config.sample.negative_prompt])
        self._base_negative: torch.Tensor | None = None  # (1, L, D), the negative prompt off the LoRA

    # ------------------------------------------------------------------ prompts → embeddings → noise
    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        return tokenize(self.tokenizer, prompts)

    def encode(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        """Prompt embeddings (B, L, D) from the text encoder, LoRA included."""
        return self.text_encoder(prompt_ids.to(self.device))[0]

    @property
    def uses_guidance(self) -> bool:
        return self.config.sample.guidance_scale > 1

    def negative_embeds(self, batch_size: int) -> torch.Tensor:
        """Embeddings of the negative prompt, through the LoRA unless `train.use_lora_for_negative` is off.

        Off the LoRA (or with no text-encoder LoRA) they are a constant of the run, encoded once.
        """
        if self.config.train.use_lora_for_negative and self.config.text_lora.use:
            return self.encode(self.negative_ids.expand(batch_size, -1))
        if self._base_negative is None:
            with torch.no_grad():
                if self.config.text_lora.use:
                    self.text_encoder.disable_adapters()
                try:
                    self._base_negative = self.encode(self.negative_ids)
                finally:
                    if self.config.text_lora.use:
                        self.text_encoder.enable_adapters()
        return self._base_negative.expand(batch_size, -1, -1)

    def noise_predictor(self, prompt_embeds: torch.Tensor, negative_embeds: torch.Tensor | None) -> NoisePredictor:
        return guided_noise_fn(self.unet, prompt_embeds, negative_embeds, self.config.sample.guidance_scale)

    def conditioned_predictor(self, prompt_ids: torch.Tensor) -> NoisePredictor:
        """The noise predictor for these prompts, graph kept when gradients are enabled."""
        negative = self.negative_embeds(len(prompt_ids)) if self.uses_guidance else None
        return self.noise_predictor(self.encode(prompt_ids), negative)

    # ------------------------------------------------------------------ sampling
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the latents at `sample.resolution` (default: the model's native size)."""
        scale = self.pipe.vae_scale_factor
        resolution = self.config.sample.resolution or self.unet.config.sample_size * scale
        return self.unet.config.in_channels, resolution // scale, resolution // scale

    def initial_noise(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """Pure-noise latents (count, C, h, w) on the CPU from `generator`: the same on any device."""
        return torch.randn((count, *self.latent_shape), generator=generator)

    @torch.no_grad()
    def sample(
        self,
        prompts: Sequence[str],
        generators: torch.Generator | Sequence[torch.Generator],
        progress: Callable[[], None] | None = None,
    ) -> Trajectory:
        """DDPO chains of `prompts` in batches of `sample.batch_size_per_device`, batch i drawing its noise from
        `generators[i]` (or all from one generator); everything on the CPU."""
        s = self.config.sample
        batches = []
        for index, start in enumerate(range(0, len(prompts), s.batch_size_per_device)):
            generator = generators[index] if isinstance(generators, Sequence) else generators
            batch = list(prompts[start : start + s.batch_size_per_device])
            ids = self.tokenize(batch)
            noise = self.initial_noise(len(batch), generator)
            latents, log_probs, timesteps = sample_latents(
                self.conditioned_predictor(ids),
                self.scheduler,
                noise.to(self.device, self.unet.dtype),
                s.num_steps,
                s.eta,
                generator,
                progress,
            )
            images = decode_latents(self.vae, latents[:, -1])
            batches.append((batch, ids, latents.cpu(), log_probs.cpu(), timesteps.cpu(), images.cpu()))
        return Trajectory(
            prompts=[p for b in batches for p in b[0]],
            prompt_ids=torch.cat([b[1] for b in batches]),
            latents=torch.cat([b[2] for b in batches]),  # (N, T+1, C, h, w)
            log_probs=torch.cat([b[3] for b in batches]),  # (N, T)
            timesteps=batches[0][4],  # (T,)
            images=torch.cat([b[5] for b in batches]),  # (N, 3, H, W)
        )

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], noise: torch.Tensor, eta: float = 0.0) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] on the CPU of `prompts` from initial `noise` (B, C, h, w): the sampler's
        steps and guidance, deterministic DDIM by default (evaluation)."""
        latents = denoise(
            self.conditioned_predictor(self.tokenize(prompts)),
            self.scheduler,
            noise.to(self.device, torch.float32),
            self.config.sample.num_steps,
            eta,
        )
        return decode_latents(self.vae, latents).cpu()

    # ------------------------------------------------------------------ adapters on disk
    def save_adapters(self, folder: Path) -> None:
        """Both formats (diffusers + PEFT) of the trained adapters into `folder`."""
        save_adapters(
            folder,
            self.text_encoder if self.config.text_lora.use else None,
            self.unet if self.config.unet_lora.use else None,
            self.config.model.base,
        )

    def load_adapters(self, folder: Path) -> None:
        """Restore the trained adapters from a folder `save_adapters` wrote (a checkpoint's `lora/`)."""
        for name, module, use in (
            ("text_encoder", self.text_encoder, self.config.text_lora.use),
            ("unet", self.unet, self.config.unet_lora.use),
        ):
            if use:
                weights = load_file(folder / name / PEFT_WEIGHTS)
                set_peft_model_state_dict(module, {k.removeprefix(PEFT_PREFIX): v for k, v in weights.items()})
