"""The policy: LoRA adapters on a frozen diffusion pipeline — on the text encoders (TexForce) and optionally the U-Net.

It turns prompts into conditioning (through the text-encoder LoRAs, with gradients while training) and conditioning
into noise predictions. Stable Diffusion has one text encoder, SDXL two: they are a list here, and every path serves
both. `sample` records DDPO's stochastic chains; `generate` renders final images (evaluation). Every algorithm trains
the same policy; only how its gradient is estimated differs (`texforce.algorithms`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from peft.utils import set_peft_model_state_dict
from safetensors.torch import load_file

from texforce.config import SharedConfig, TextLora2Config
from texforce.errors import TexforceError
from texforce.export import PEFT_PREFIX, PEFT_WEIGHTS, save_adapters
from texforce.models import add_lora, prepare_pipeline, text_encoders
from texforce.sampling import (
    Conditioning,
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

    def __init__(self, config: SharedConfig, device: torch.device) -> None:
        self.config = config
        self.device = device
        self.pipe = prepare_pipeline(config.model, device)
        self.scheduler = self.pipe.scheduler
        self.text_encoders = text_encoders(self.pipe)  # by component name: text_encoder[, text_encoder_2]
        self.tokenizers = [getattr(self.pipe, n.replace("text_encoder", "tokenizer")) for n in self.text_encoders]
        self.unet, self.vae = self.pipe.unet, self.pipe.vae
        if len(self.text_encoders) == 1 and config.text_lora_2 != TextLora2Config():
            raise TexforceError(f"text_lora_2 sets SDXL's second text encoder; {config.model.base} has only one")
        self.param_groups: list[dict] = []
        if config.text_lora.use:
            seeds = (config.seed, config.seed + 2)  # + 1 is the U-Net's
            params = [
                p
                for index, (encoder, seed) in enumerate(zip(self.text_encoders.values(), seeds, strict=False))
                for p in add_lora(encoder, config.text_lora_of(index), seed)
            ]
            self.param_groups.append({"params": params, "lr": config.text_lora.learning_rate})
        if config.unet_lora.use:
            params = add_lora(self.unet, config.unet_lora, config.seed + 1)
            self.param_groups.append({"params": params, "lr": config.unet_lora.learning_rate})
        self.trainable = [p for group in self.param_groups for p in group["params"]]
        self.time_ids = self._time_ids()
        self.negative_ids = self.tokenize([config.sample.negative_prompt])
        self._base_negative: Conditioning | None = None  # batch 1, the negative prompt off the LoRA

    # ------------------------------------------------------------------ prompts → conditioning → noise
    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """Token ids (B, L) of every tokenizer side by side (SDXL: its two tokenizers pad differently)."""
        return torch.cat([tokenize(tokenizer, prompts) for tokenizer in self.tokenizers], dim=1)

    def encode(self, prompt_ids: torch.Tensor) -> Conditioning:
        """The conditioning of these prompts through the text encoders, LoRA included.

        SD: the last hidden state (B, L, D). SDXL, as `StableDiffusionXLPipeline.encode_prompt`: both encoders'
        penultimate hidden states side by side (B, 77, D1 + D2), the second encoder's projected pooled output (B, P),
        and the time ids of `sample.resolution`.
        """
        lengths = [tokenizer.model_max_length for tokenizer in self.tokenizers]
        ids = prompt_ids.to(self.device).split(lengths, dim=1)
        encoders = list(self.text_encoders.values())
        if len(encoders) == 1:
            return Conditioning(encoders[0](ids[0])[0])
        outputs = [encoder(i, output_hidden_states=True) for encoder, i in zip(encoders, ids, strict=True)]
        prompt_embeds = torch.cat([output.hidden_states[-2] for output in outputs], dim=-1)
        time_ids = self.time_ids.to(self.device).expand(len(prompt_embeds), -1)
        return Conditioning(prompt_embeds, outputs[-1].text_embeds, time_ids)

    def _time_ids(self) -> torch.Tensor | None:
        """SDXL's (1, 6) size and crop conditioning of an uncropped image at `sample.resolution`, by the
        pipeline's own `_get_add_time_ids`; None for SD."""
        if "text_encoder_2" not in self.text_encoders:
            return None
        size = (self.latent_shape[1] * self.pipe.vae_scale_factor,) * 2
        return self.pipe._get_add_time_ids(
            size,
            (0, 0),
            size,
            dtype=torch.float32,
            text_encoder_projection_dim=self.text_encoders["text_encoder_2"].config.projection_dim,
        )

    @property
    def uses_guidance(self) -> bool:
        return self.config.sample.guidance_scale > 1

    def negative_embeds(self, batch_size: int) -> Conditioning:
        """The negative prompt's conditioning, through the LoRA unless `train.use_lora_for_negative` is off.

        Off the LoRA (or with no text-encoder LoRA) it is a constant of the run, encoded once.
        """
        if self.config.train.use_lora_for_negative and self.config.text_lora.use:
            return self.encode(self.negative_ids.expand(batch_size, -1))
        if self._base_negative is None:
            with torch.no_grad(), self.frozen():
                self._base_negative = self.encode(self.negative_ids)
        return self._base_negative.map(lambda t: t.expand(batch_size, *t.shape[1:]))

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Within the block every adapter is off: the frozen base pipeline (the reference policy of a KL penalty)."""
        modules = list(self.text_encoders.values()) if self.config.text_lora.use else []
        modules += [self.unet] if self.config.unet_lora.use else []
        for module in modules:
            module.disable_adapters()
        try:
            yield
        finally:
            for module in modules:
                module.enable_adapters()

    def noise_predictor(self, conditioning: Conditioning, negative: Conditioning | None) -> NoisePredictor:
        return guided_noise_fn(self.unet, conditioning, negative, self.config.sample.guidance_scale)

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
        stochastic: range | None = None,
    ) -> Trajectory:
        """DDPO chains of `prompts` in batches of `sample.batch_size_per_device`, batch i drawing its noise from
        `generators[i]` (or all from one generator); only the `stochastic` steps (default all) draw noise and
        have a log-prob. Everything on the CPU."""
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
                stochastic,
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
    def _trained_modules(self) -> dict[str, torch.nn.Module]:
        """The modules with a trained adapter, by component name."""
        modules = dict(self.text_encoders) if self.config.text_lora.use else {}
        return {**modules, "unet": self.unet} if self.config.unet_lora.use else modules

    def save_adapters(self, folder: Path) -> None:
        """Both formats (diffusers + PEFT) of the trained adapters into `folder`."""
        modules = self._trained_modules()
        save_adapters(
            folder,
            modules.get("text_encoder"),
            modules.get("unet"),
            self.config.model.base,
            text_encoder_2=modules.get("text_encoder_2"),
        )

    def load_adapters(self, folder: Path) -> None:
        """Restore the trained adapters from a folder `save_adapters` wrote (a checkpoint's `lora/`)."""
        for name, module in self._trained_modules().items():
            weights = load_file(folder / name / PEFT_WEIGHTS)
            set_peft_model_state_dict(module, {k.removeprefix(PEFT_PREFIX): v for k, v in weights.items()})
