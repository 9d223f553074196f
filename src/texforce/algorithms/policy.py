"""The policy: LoRA adapters on a frozen diffusion pipeline — on the text encoders (TexForce) and optionally the U-Net.

It turns prompts into conditioning (through the text-encoder LoRAs, with gradients while training) and conditioning
into the denoiser's predictions. Stable Diffusion has one text encoder, SDXL two CLIPs, SD3 two CLIPs and a T5,
FLUX a CLIP and a T5: they are a dict here, and every path serves all of them. `sample` records DDPO's stochastic
chains; `generate` renders final images (evaluation). Every algorithm trains the same policy; only how its gradient
is estimated differs (`texforce.algorithms`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, FluxPipeline, StableDiffusion3Pipeline, StableDiffusionXLPipeline
from peft.utils import set_peft_model_state_dict
from safetensors.torch import load_file

from texforce.adapters.files import PEFT_PREFIX, PEFT_WEIGHTS, save_adapters
from texforce.bases.loading import (
    T5_LENGTH,
    add_lora,
    denoiser,
    is_flow_pipeline,
    is_t5,
    prepare_pipeline,
    t5_free_length,
    text_encoders,
)
from texforce.config import SharedConfig, TextLora2Config
from texforce.errors import TexforceError
from texforce.sampling import (
    Conditioning,
    NoisePredictor,
    Trajectory,
    decode_latents,
    denoise,
    guided_noise_fn,
    sample_latents,
)


def tokenize(tokenizer, prompts: Sequence[str], max_length: int | None = None) -> torch.Tensor:
    """Token ids (B, L), padded to `max_length` (default: the tokenizer's full length) as Stable Diffusion does."""
    return tokenizer(
        list(prompts),
        padding="max_length",
        max_length=max_length or tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


class Policy:
    """The frozen pipeline of `config.model` on `device` with the configured LoRA adapters added (fp32); `pipe`, when
    given, is used instead of loading `config.model.base` (`texforce plan` builds it on the meta device)."""

    def __init__(self, config: SharedConfig, device: torch.device, pipe: DiffusionPipeline | None = None) -> None:
        self.config = config
        self.device = device
        self.pipe = prepare_pipeline(config.model, device, pipe)
        self.scheduler = self.pipe.scheduler
        self.text_encoders = text_encoders(self.pipe)  # by component name: text_encoder[, text_encoder_2[, _3]]
        self.tokenizers = [getattr(self.pipe, n.replace("text_encoder", "tokenizer")) for n in self.text_encoders]
        pairs = zip(self.tokenizers, self.text_encoders.values(), strict=True)
        self.token_lengths = [self._token_length(tokenizer, encoder) for tokenizer, encoder in pairs]
        self.denoiser, self.vae = denoiser(self.pipe), self.pipe.vae
        self._check_base()
        self.param_groups: list[dict] = []
        self.adapted: dict[str, torch.nn.Module] = {}  # the modules with a trained adapter, by component name
        if config.text_lora.use:
            params = []
            clip_index = 0
            for index, (name, encoder) in enumerate(self.text_encoders.items()):
                seed = config.seed + (0 if index == 0 else index + 1)  # + 1 is the U-Net's
                if is_t5(encoder):
                    if not config.text_lora.t5:
                        continue
                    params += add_lora(encoder, config.t5_lora(), seed)
                else:
                    params += add_lora(encoder, config.text_lora_of(clip_index), seed)
                    clip_index += 1
                self.adapted[name] = encoder
            self.param_groups.append({"params": params, "lr": config.text_lora.learning_rate})
        if config.unet_lora.use:
            params = add_lora(self.denoiser, config.unet_lora, config.seed + 1)
            self.param_groups.append({"params": params, "lr": config.unet_lora.learning_rate})
            self.adapted["unet"] = self.denoiser
        self.trainable = [p for group in self.param_groups for p in group["params"]]
        self.time_ids = self._time_ids()
        self.negative_ids = self.tokenize([config.sample.negative_prompt])
        self._base_negative: Conditioning | None = None  # batch 1, the negative prompt off the LoRA

    def _check_base(self) -> None:
        """One-line errors for adapters the base model has no place for."""
        c, base = self.config, self.config.model.base
        clips = [e for e in self.text_encoders.values() if not is_t5(e)]
        if len(clips) == 1 and c.text_lora_2 != TextLora2Config():
            raise TexforceError(f"text_lora_2 sets the second CLIP text encoder (SDXL, SD3); {base} has only one")
        if c.text_lora.t5 and len(clips) == len(self.text_encoders):
            raise TexforceError(f"text_lora.t5 is set but {base} has no T5 text encoder (SD3 and FLUX have one)")
        if c.unet_lora.use and is_flow_pipeline(self.pipe):
            raise TexforceError(
                f"unet_lora trains a U-Net; {base} denoises with a transformer: texforce tunes its text encoders "
                "(set unet_lora.use=false)"
            )
        if is_flow_pipeline(self.pipe) and self.latent_shape[1] % 2:  # the transformers see 2 × 2 latent patches
            raise TexforceError(f"{base} needs sample.resolution a multiple of {2 * self.pipe.vae_scale_factor}")

    def _token_length(self, tokenizer, encoder: torch.nn.Module) -> int:
        """Tokens per prompt of one encoder: its tokenizer's length (CLIP's 77); T5's as its pipeline sets it."""
        if not is_t5(encoder):
            return tokenizer.model_max_length
        length = self.config.model.max_sequence_length or T5_LENGTH[type(self.pipe)]
        return min(length, tokenizer.model_max_length)

    # ------------------------------------------------------------------ prompts → conditioning → noise
    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """Token ids (B, L) of every tokenizer side by side (SDXL: its two tokenizers pad differently)."""
        pairs = zip(self.tokenizers, self.token_lengths, strict=True)
        return torch.cat([tokenize(tokenizer, prompts, length) for tokenizer, length in pairs], dim=1)

    def encode(self, prompt_ids: torch.Tensor) -> Conditioning:
        """The conditioning of these prompts through the text encoders, LoRA included, as each pipeline's
        `encode_prompt` makes it.

        SD: the last hidden state (B, L, D). SDXL: both encoders' penultimate hidden states side by side
        (B, 77, D1 + D2), the second encoder's projected pooled output (B, P), and the time ids of
        `sample.resolution`. SD3: the two CLIPs' penultimate states side by side, zero-padded to T5's width, then
        T5's states after them (B, 77 + L_T5, D_T5); pooled: both CLIPs' projections (B, P1 + P2). FLUX: T5's states
        (B, L_T5, D_T5); pooled: CLIP's pooled output (B, 768).
        """
        ids = dict(zip(self.text_encoders, prompt_ids.to(self.device).split(self.token_lengths, dim=1), strict=True))
        encoders = self.text_encoders
        if isinstance(self.pipe, FluxPipeline):
            pooled = encoders["text_encoder"](ids["text_encoder"]).pooler_output
            return Conditioning(encoders["text_encoder_2"](ids["text_encoder_2"])[0], pooled)
        if len(encoders) == 1:
            return Conditioning(encoders["text_encoder"](ids["text_encoder"])[0])
        clips = [name for name, encoder in encoders.items() if not is_t5(encoder)]
        outputs = [encoders[name](ids[name], output_hidden_states=True) for name in clips]
        prompt_embeds = torch.cat([output.hidden_states[-2] for output in outputs], dim=-1)
        if isinstance(self.pipe, StableDiffusion3Pipeline):
            if "text_encoder_3" in encoders:
                t5 = encoders["text_encoder_3"](ids["text_encoder_3"])[0]
            else:  # T5 left out: zero tokens, as the pipeline makes them
                length = t5_free_length(self.pipe, self.config.model.max_sequence_length)
                t5 = prompt_embeds.new_zeros(len(prompt_embeds), length, self.denoiser.config.joint_attention_dim)
            padded = torch.nn.functional.pad(prompt_embeds, (0, t5.shape[-1] - prompt_embeds.shape[-1]))
            pooled = torch.cat([output.text_embeds for output in outputs], dim=-1)
            return Conditioning(torch.cat([padded, t5], dim=-2), pooled)
        time_ids = self.time_ids.to(self.device).expand(len(prompt_embeds), -1)
        return Conditioning(prompt_embeds, outputs[-1].text_embeds, time_ids)

    def _time_ids(self) -> torch.Tensor | None:
        """SDXL's (1, 6) size and crop conditioning of an uncropped image at `sample.resolution`, by the
        pipeline's own `_get_add_time_ids`; None for the others."""
        if not isinstance(self.pipe, StableDiffusionXLPipeline):
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
        """Classifier-free guidance with a negative branch (FLUX has none: its guidance scale is an embedding)."""
        return self.config.sample.guidance_scale > 1 and not isinstance(self.pipe, FluxPipeline)

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
        for module in self.adapted.values():
            module.disable_adapters()
        try:
            yield
        finally:
            for module in self.adapted.values():
                module.enable_adapters()

    def enable_gradient_checkpointing(self, vae: bool = False) -> None:
        """Per-block checkpointing of the denoiser (and of the VAE with `vae`), by the models' own
        `enable_gradient_checkpointing()`: with a graph, only each block's inputs are kept and the block is recomputed
        in the backward pass; without one (sampling, evaluation) nothing changes."""
        for module in (self.denoiser, self.vae) if vae else (self.denoiser,):
            module.enable_gradient_checkpointing()

    def noise_predictor(self, conditioning: Conditioning, negative: Conditioning | None) -> NoisePredictor:
        return guided_noise_fn(self.denoiser, conditioning, negative, self.config.sample.guidance_scale)

    def conditioned_predictor(self, prompt_ids: torch.Tensor) -> NoisePredictor:
        """The noise predictor for these prompts, graph kept when gradients are enabled."""
        negative = self.negative_embeds(len(prompt_ids)) if self.uses_guidance else None
        return self.noise_predictor(self.encode(prompt_ids), negative)

    # ------------------------------------------------------------------ sampling
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of the latents at `sample.resolution` (default: the model's native size)."""
        scale = self.pipe.vae_scale_factor
        if is_flow_pipeline(self.pipe):  # FLUX's transformer sees 2 × 2 patches: the VAE's channels are the latent's
            native, channels = self.pipe.default_sample_size, self.vae.config.latent_channels
        else:
            native, channels = self.denoiser.config.sample_size, self.denoiser.config.in_channels
        resolution = self.config.sample.resolution or native * scale
        return channels, resolution // scale, resolution // scale

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
        have a log-prob. Everything on the CPU.

        The chain is kept in fp32 whatever the frozen dtype (the denoiser casts its own input): each recorded
        log-prob is that of exactly the stored latent, so PPO's ratio is 1 on-policy in bf16 too (a chain stored in
        bf16 re-scores a rounded sample: ratio below 1, clipfrac 0.7 at clip 1e-4)."""
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
                noise.to(self.device, torch.float32),  # the chain in fp32: only the denoiser's input is half
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
    def save_adapters(self, folder: Path, ui_name: str | None = None) -> None:
        """The trained adapters into `folder`: diffusers + PEFT (a T5's in PEFT only), and with `ui_name` the kohya
        file `<ui_name>.safetensors` for ComfyUI, Forge and AUTOMATIC1111."""
        base, pipeline = self.config.model.base, type(self.pipe)
        save_adapters(folder, self.adapted, base, pipeline_class=pipeline, ui_name=ui_name)

    def load_adapters(self, folder: Path) -> None:
        """Restore the trained adapters from a folder `save_adapters` wrote (a checkpoint's `lora/`)."""
        for name, module in self.adapted.items():
            weights = load_file(folder / name / PEFT_WEIGHTS)
            set_peft_model_state_dict(module, {k.removeprefix(PEFT_PREFIX): v for k, v in weights.items()})
