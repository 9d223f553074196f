"""The random SD3 / SD3.5 and FLUX.1 built-ins: the tiny ones are the pipelines diffusers expects and run through
diffusers' own call; the full-size ones, built on the meta device, have the published parameter counts; the
stand-in T5 tokenizer has T5's special ids and behaviour."""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel, T5TokenizerFast

from texforce.bases.flow import (
    FLOW_BUILT_IN,
    FLUX_VARIANTS,
    PUBLISHED_PARAMETERS,
    SD3_VARIANTS,
    build_flux_pipeline,
    build_sd3_pipeline,
    build_tiny_flux_pipeline,
    build_tiny_sd3_pipeline,
    parameter_counts,
)
from texforce.tokenizer import T5_VOCAB_SIZE, build_t5_standin_tokenizer

PROMPTS = ["a red circle", "two blue squares"]
TINY = {
    "sd3": build_tiny_sd3_pipeline,
    "flux-dev": build_tiny_flux_pipeline,
    "flux-schnell": lambda **kwargs: build_tiny_flux_pipeline(guidance_embeds=False, **kwargs),
}


def _weights(pipe) -> list[torch.Tensor]:
    return [p for name in parameter_counts(pipe) for p in getattr(pipe, name).parameters()]


def test_tiny_sd3_is_an_sd3_pipeline_of_the_expected_parts():
    pipe = build_tiny_sd3_pipeline()
    assert isinstance(pipe, StableDiffusion3Pipeline)
    assert isinstance(pipe.transformer, SD3Transformer2DModel) and isinstance(pipe.vae, AutoencoderKL)
    assert all(isinstance(e, CLIPTextModelWithProjection) for e in (pipe.text_encoder, pipe.text_encoder_2))
    assert isinstance(pipe.text_encoder_3, T5EncoderModel) and isinstance(pipe.tokenizer_3, T5TokenizerFast)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.scheduler.config.shift == 3.0
    assert pipe.tokenizer_2.pad_token == "!" and pipe.tokenizer.pad_token == "<|endoftext|>"
    config, clips = pipe.transformer.config, (pipe.text_encoder.config, pipe.text_encoder_2.config)
    assert config.joint_attention_dim == pipe.text_encoder_3.config.d_model > sum(c.hidden_size for c in clips)
    assert config.pooled_projection_dim == sum(c.projection_dim for c in clips)
    assert config.in_channels == pipe.vae.config.latent_channels == 16 and pipe.vae_scale_factor == 8
    assert pipe.vae.config.shift_factor == 0.0609 and pipe.vae.config.scaling_factor == 1.5305


@pytest.mark.parametrize("guidance_embeds", [True, False])
def test_tiny_flux_is_a_flux_pipeline_of_the_expected_parts(guidance_embeds):
    pipe = build_tiny_flux_pipeline(guidance_embeds=guidance_embeds)
    assert isinstance(pipe, FluxPipeline) and isinstance(pipe.transformer, FluxTransformer2DModel)
    assert isinstance(pipe.text_encoder, CLIPTextModel) and isinstance(pipe.text_encoder_2, T5EncoderModel)
    assert isinstance(pipe.tokenizer_2, T5TokenizerFast) and isinstance(pipe.vae, AutoencoderKL)
    config = pipe.transformer.config
    assert config.guidance_embeds == guidance_embeds
    assert config.in_channels == 4 * pipe.vae.config.latent_channels == 64 and pipe.vae_scale_factor == 8
    assert sum(config.axes_dims_rope) == config.attention_head_dim
    assert config.joint_attention_dim == pipe.text_encoder_2.config.d_model
    assert config.pooled_projection_dim == pipe.text_encoder.config.hidden_size
    scheduler = pipe.scheduler.config
    assert scheduler.use_dynamic_shifting == guidance_embeds  # dev: resolution-dependent shift; schnell: none
    assert (scheduler.base_shift, scheduler.max_shift, scheduler.base_image_seq_len) == (0.5, 1.15, 256)


@pytest.mark.parametrize("kind", TINY)
@pytest.mark.parametrize("size", [64, 32])
def test_tiny_pipelines_run_their_own_diffusers_call(kind, size):
    pipe = TINY[kind](image_size=size)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        prompt=PROMPTS, num_inference_steps=2, output_type="pt", height=size, width=size, guidance_scale=3.0
    ).images
    assert images.shape == (2, 3, size, size) and torch.isfinite(images).all()
    assert images.std() > 0.01 and not torch.allclose(images[0], images[1])  # the prompt changes the image


@pytest.mark.parametrize("kind", TINY)
def test_same_seed_same_weights(kind):
    first, again, other = TINY[kind](seed=3), TINY[kind](seed=3), TINY[kind](seed=4)
    assert all(torch.equal(a, b) for a, b in zip(_weights(first), _weights(again), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(_weights(first), _weights(other), strict=True))


def test_tiny_sd3_encode_prompt_shapes_and_padding():
    pipe = build_tiny_sd3_pipeline()
    length = pipe.tokenizer_3.model_max_length
    with torch.no_grad():
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            PROMPTS, None, None, do_classifier_free_guidance=True, max_sequence_length=length
        )
    config = pipe.transformer.config
    assert embeds.shape == negative.shape == (2, 77 + length, config.joint_attention_dim)
    assert pooled.shape == negative_pooled.shape == (2, config.pooled_projection_dim)
    clip_width = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert torch.all(embeds[:, :77, clip_width:] == 0)  # CLIP states zero-padded to T5's width
    assert embeds[:, :77, :clip_width].std() > 0 and embeds[:, 77:].std() > 0
    assert not torch.equal(embeds[0], embeds[1])


def test_tiny_flux_encode_prompt_shapes():
    pipe = build_tiny_flux_pipeline()
    length = pipe.tokenizer_2.model_max_length
    with torch.no_grad():
        embeds, pooled, text_ids = pipe.encode_prompt(PROMPTS, None, max_sequence_length=length)
    config = pipe.transformer.config
    assert embeds.shape == (2, length, config.joint_attention_dim)
    assert pooled.shape == (2, config.pooled_projection_dim) and text_ids.shape == (length, 3)


def test_standin_t5_tokenizer_has_t5_specials():
    tokenizer = build_t5_standin_tokenizer(model_max_length=12)
    assert isinstance(tokenizer, T5TokenizerFast) and len(tokenizer) == 32_100 <= T5_VOCAB_SIZE
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.unk_token) == ("<pad>", "</s>", "<unk>")
    assert tokenizer.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_99>"]) == [32099, 32000]  # as T5's
    prompts = [*PROMPTS, "a " * 40]
    ids = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    assert ids.shape == (3, 12) and int(ids.max()) < T5_VOCAB_SIZE
    assert ids[0].tolist()[:4] == tokenizer("a red circle").input_ids and ids[0, 3] == 1  # 3 words + </s>
    assert ids[0, 4:].eq(0).all() and ids[1, 5:].eq(0).all()  # padded on the right with <pad>
    assert ids[2, -1] == 1 and ids[2].ne(0).all()  # truncated, the </s> kept
    assert not torch.equal(ids[0], ids[1])


def test_standin_t5_tokenizer_round_trips(tmp_path):
    tokenizer = build_t5_standin_tokenizer(77)
    tokenizer.save_pretrained(tmp_path)
    loaded = T5TokenizerFast.from_pretrained(tmp_path)
    prompt = "a photo of an astronaut"
    assert loaded.model_max_length == 77 and loaded(prompt).input_ids == tokenizer(prompt).input_ids


def _within(counts: dict[str, int], published: dict[str, int], tolerance: float = 0.02) -> dict[str, float]:
    """The relative error of each published component that is off by more than `tolerance`."""
    errors = {name: counts[name] / expected - 1 for name, expected in published.items()}
    return {name: error for name, error in errors.items() if abs(error) > tolerance}


@pytest.mark.parametrize("variant", SD3_VARIANTS)
def test_full_size_sd3_has_the_published_sizes(variant):
    pipe = build_sd3_pipeline(variant, device="meta")
    assert all(p.is_meta for p in _weights(pipe))  # nothing allocated
    counts = parameter_counts(pipe)
    assert counts.keys() == {"transformer", "text_encoder", "text_encoder_2", "text_encoder_3", "vae"}
    assert not _within(counts, PUBLISHED_PARAMETERS[variant])
    config = pipe.transformer.config
    assert config.joint_attention_dim == pipe.text_encoder_3.config.d_model == 4096
    assert config.pooled_projection_dim == 768 + 1280 and config.in_channels == pipe.vae.config.latent_channels


@pytest.mark.parametrize("variant", FLUX_VARIANTS)
def test_full_size_flux_has_the_published_sizes(variant):
    pipe = build_flux_pipeline(variant, device="meta")
    assert all(p.is_meta for p in _weights(pipe))
    counts = parameter_counts(pipe)
    assert counts.keys() == {"transformer", "text_encoder", "text_encoder_2", "vae"}
    assert not _within(counts, PUBLISHED_PARAMETERS[variant])
    assert pipe.transformer.config.guidance_embeds == (variant == "flux-dev")
    assert pipe.scheduler.config.use_dynamic_shifting == (variant == "flux-dev")


def test_the_size_check_can_fail():
    assert _within({"transformer": 2_028_328_000}, {"transformer": 2_500_000_000}) == pytest.approx(
        {"transformer": 2_028_328_000 / 2_500_000_000 - 1}
    )


def test_unknown_variants_are_refused():
    with pytest.raises(ValueError, match="sd35-medium"):
        build_sd3_pipeline("sd4", device="meta")
    with pytest.raises(ValueError, match="flux-dev"):
        build_flux_pipeline("flux-pro", device="meta")


def test_built_in_names():
    full = {"sd3-medium", "sd35-medium", "sd35-large", "flux-dev", "flux-schnell"}
    assert FLOW_BUILT_IN.keys() == {"texforce/tiny-sd3-random", "texforce/tiny-flux-random"} | {
        f"texforce/{variant}-random" for variant in full
    }
    assert isinstance(FLOW_BUILT_IN["texforce/tiny-sd3-random"](), StableDiffusion3Pipeline)
    tiny_flux = FLOW_BUILT_IN["texforce/tiny-flux-random"]()
    assert isinstance(tiny_flux, FluxPipeline) and tiny_flux.transformer.config.guidance_embeds  # dev-like
    for variant in full:  # the full-size ones only on the meta device: their weights take tens of GB
        pipe = FLOW_BUILT_IN[f"texforce/{variant}-random"](device="meta")
        assert not _within(parameter_counts(pipe), PUBLISHED_PARAMETERS[variant])
