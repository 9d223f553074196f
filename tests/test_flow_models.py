"""SD3 and FLUX (flow matching): conditioning exactly as their pipelines' `encode_prompt`, texforce's sampler equal
to the stock pipeline's, DDPO's recorded log-probs on-policy, one epoch of DDPO and of backprop with CLIP and T5
adapters, and the adapters round-tripping through texforce's loader and diffusers' own."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_overrides
from diffusers import FluxPipeline, StableDiffusion3Pipeline
from safetensors.torch import load_file

from texforce.adapters.files import load_text_adapters
from texforce.algorithms.policy import Policy
from texforce.bases.flow import build_tiny_flux_pipeline, build_tiny_sd3_pipeline
from texforce.bases.loading import call_options, load_pipeline
from texforce.errors import TexforceError
from texforce.run.run_config import load_config
from texforce.run.train import train_run
from texforce.sampling import pack_flux_latents, step_with_logprob, unpack_flux_latents

PROMPTS = ["a red circle", "two blue squares"]
SIZE = 32  # image pixels: 4 × 4 latents (SD3) and 2 × 2 patches of them (FLUX)


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_sd3") / "pipeline"
    build_tiny_sd3_pipeline(seed=0, image_size=SIZE).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def flux_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_flux") / "pipeline"
    build_tiny_flux_pipeline(seed=0, image_size=SIZE).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def schnell_dir(tmp_path_factory):
    """FLUX.1-schnell-like: no guidance embedding, no shift."""
    folder = tmp_path_factory.mktemp("tiny_schnell") / "pipeline"
    build_tiny_flux_pipeline(seed=0, image_size=SIZE, guidance_embeds=False).save_pretrained(folder)
    return folder


def flow_overrides(model_dir, output_dir, **extra) -> list[str]:
    values = {"sample__resolution": SIZE, "sample__eta": 0.7, "text_lora__t5": True, **extra}
    return tiny_overrides(model_dir, output_dir, **values)


def make_policy(model_dir, tmp_path, **extra) -> Policy:
    return Policy(load_config(None, flow_overrides(model_dir, tmp_path, **extra)), torch.device("cpu"))


def stock(cls, model_dir):
    pipe = cls.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_sd3_conditioning_is_stock_encode_prompt(sd3_dir, tmp_path):
    policy = make_policy(sd3_dir, tmp_path)  # LoRA B = 0 at init: the base encoders
    length = policy.token_lengths[2]
    with torch.no_grad():
        ours, negative = policy.encode(policy.tokenize(PROMPTS)), policy.negative_embeds(len(PROMPTS))
        embeds, negative_embeds, pooled, negative_pooled = stock(StableDiffusion3Pipeline, sd3_dir).encode_prompt(
            PROMPTS, PROMPTS, PROMPTS, negative_prompt=[""] * 2, do_classifier_free_guidance=True,
            max_sequence_length=length,
        )  # fmt: skip
    assert ours.prompt_embeds.shape == embeds.shape and ours.prompt_embeds.shape[1] == 77 + length
    for a, b in ((ours.prompt_embeds, embeds), (ours.pooled_embeds, pooled)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    for a, b in ((negative.prompt_embeds, negative_embeds), (negative.pooled_embeds, negative_pooled)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_flux_conditioning_is_stock_encode_prompt(flux_dir, tmp_path):
    policy = make_policy(flux_dir, tmp_path)
    assert not policy.uses_guidance  # FLUX's guidance is an embedding: no negative branch
    with torch.no_grad():
        ours = policy.encode(policy.tokenize(PROMPTS))
        embeds, pooled, _ = stock(FluxPipeline, flux_dir).encode_prompt(
            PROMPTS, PROMPTS, max_sequence_length=policy.token_lengths[1]
        )
    torch.testing.assert_close(ours.prompt_embeds, embeds, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.pooled_embeds, pooled, atol=1e-6, rtol=0)


def test_flux_patches_round_trip():
    latents = torch.randn(2, 4, 6, 8)
    packed = pack_flux_latents(latents)
    assert packed.shape == (2, 12, 16)
    torch.testing.assert_close(unpack_flux_latents(packed, 6, 8), latents)


@pytest.mark.parametrize("kind", ["sd3", "flux", "schnell"])
def test_generate_equals_the_stock_pipeline(kind, sd3_dir, flux_dir, schnell_dir, tmp_path):
    """Deterministic sampling (Euler, noise level 0) from the same noise: texforce's chain = the pipeline's own
    (SD3's schedule, FLUX.1-dev's resolution-dependent shift and guidance embedding, schnell's plain schedule)."""
    model_dir = {"sd3": sd3_dir, "flux": flux_dir, "schnell": schnell_dir}[kind]
    cls = StableDiffusion3Pipeline if kind == "sd3" else FluxPipeline
    policy = make_policy(model_dir, tmp_path, sample__guidance_scale=4.0)
    noise = policy.initial_noise(len(PROMPTS), torch.Generator().manual_seed(0))
    ours = policy.generate(PROMPTS, noise)
    pipe, length = stock(cls, model_dir), policy.token_lengths[-1]
    options = dict(num_inference_steps=4, guidance_scale=4.0, output_type="pt", height=SIZE, width=SIZE)
    if kind == "sd3":
        theirs = pipe(PROMPTS, negative_prompt=[""] * 2, latents=noise, max_sequence_length=length, **options)
    else:
        theirs = pipe(PROMPTS, latents=pack_flux_latents(noise), max_sequence_length=length, **options)
    torch.testing.assert_close(ours, theirs.images.float(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_recorded_log_probs_are_on_policy(kind, sd3_dir, flux_dir, tmp_path):
    """Re-scoring every recorded transition with the same policy gives its recorded log-prob (PPO ratio 1)."""
    policy = make_policy(sd3_dir if kind == "sd3" else flux_dir, tmp_path)
    trajectory = policy.sample(PROMPTS, torch.Generator().manual_seed(1))
    with torch.no_grad():
        predict = policy.conditioned_predictor(trajectory.prompt_ids)
        for step, t in enumerate(trajectory.timesteps):
            x, timesteps = trajectory.latents[:, step], t.expand(len(PROMPTS))
            _, log_prob = step_with_logprob(
                policy.scheduler, predict(x, timesteps), timesteps, x, 0.7, prev_sample=trajectory.latents[:, step + 1]
            )
            torch.testing.assert_close(log_prob, trajectory.log_probs[:, step], atol=1e-5, rtol=0)
    assert torch.isfinite(trajectory.log_probs).all() and (trajectory.log_probs != 0).all()


@pytest.fixture(scope="module", params=["sd3-ddpo", "flux-ddpo", "sd3-backprop", "flux-backprop"])
def flow_run(request, sd3_dir, flux_dir, tmp_path_factory):
    """One epoch of DDPO or direct backprop on a tiny flow model, CLIP and T5 adapters trained."""
    kind, algorithm = request.param.split("-")
    extra = {"train__num_epochs": 1, "train__algorithm": algorithm}
    if algorithm == "backprop":
        extra.update(reward="world_clipscore", sample__eta=0.0, backprop__num_grad_steps=2)
    output = tmp_path_factory.mktemp(f"{request.param}_runs")
    model_dir = sd3_dir if kind == "sd3" else flux_dir
    return kind, model_dir, train_run(None, flow_overrides(model_dir, output, **extra), quiet=True)


def test_run_trains_and_exports_clip_and_t5_adapters(flow_run, tmp_path):
    kind, model_dir, run = flow_run
    t5 = "text_encoder_3" if kind == "sd3" else "text_encoder_2"
    lora = run / "lora"
    assert (lora / t5 / "adapter_config.json").is_file() and (lora / "text_encoder" / "adapter_config.json").is_file()
    assert (lora / "pytorch_lora_weights.safetensors").is_file()
    ui = load_file(lora / "run.safetensors")  # the UI file: every adapter; SD3's T5 as lora_te3_, FLUX's lora_te2_
    assert {k.split("_")[1] for k in ui} == ({"te1", "te2", "te3"} if kind == "sd3" else {"te1", "te2"})
    assert any("_encoder_block_" in k for k in ui) and all(ui[k].dim() == 0 for k in ui if k.endswith(".alpha"))

    # texforce's loader puts every encoder's adapter back: the trained policy's conditioning, exactly
    trained = make_policy(model_dir, tmp_path)
    trained.load_adapters(lora)
    pipe = load_pipeline(str(model_dir))
    loaded = load_text_adapters(pipe, lora)
    assert t5 in loaded and "text_encoder" in loaded
    ids = trained.tokenize(PROMPTS)
    with torch.no_grad():
        expected = trained.encode(ids)
        base = make_policy(model_dir, tmp_path / "base").encode(ids)
    assert not torch.allclose(expected.prompt_embeds, base.prompt_embeds)  # the adapters moved it
    args = {"max_sequence_length": trained.token_lengths[-1]}
    with torch.no_grad():
        if kind == "sd3":
            embeds, _, pooled, _ = pipe.encode_prompt(
                PROMPTS, PROMPTS, PROMPTS, do_classifier_free_guidance=False, **args
            )
        else:
            embeds, pooled, _ = pipe.encode_prompt(PROMPTS, PROMPTS, **args)
    torch.testing.assert_close(embeds, expected.prompt_embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(pooled, expected.pooled_embeds, atol=1e-5, rtol=0)


def test_stock_diffusers_loads_the_clip_adapters(flow_run):
    """`pipe.load_lora_weights(RUN/lora)`: diffusers' SD3 loader takes both CLIPs' adapters, FLUX's its CLIP's."""
    kind, model_dir, run = flow_run
    cls = StableDiffusion3Pipeline if kind == "sd3" else FluxPipeline
    pipe = stock(cls, model_dir)
    before = {n: p.clone() for n, p in pipe.text_encoder.named_parameters()}
    pipe.load_lora_weights(run / "lora")
    assert any("lora" in name for name, _ in pipe.text_encoder.named_parameters())
    assert all(torch.equal(p, before[n]) for n, p in pipe.text_encoder.named_parameters() if n in before)


def test_flow_base_refuses_a_unet_adapter(sd3_dir, tmp_path):
    with pytest.raises(TexforceError, match="unet_lora trains a U-Net"):
        make_policy(sd3_dir, tmp_path, unet_lora__use=True)


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_flow_base_refuses_a_resolution_off_the_patch_grid(kind, sd3_dir, flux_dir, tmp_path):
    with pytest.raises(TexforceError, match=r"needs sample\.resolution a multiple of 16"):
        make_policy(sd3_dir if kind == "sd3" else flux_dir, tmp_path, sample__resolution=40)


def test_call_options_carry_the_trained_t5_length(sd3_dir, flux_dir):
    """`texforce sample` and `eval` render with the T5 length a run trained with, and no negative for FLUX."""
    sd3, flux = stock(StableDiffusion3Pipeline, sd3_dir), stock(FluxPipeline, flux_dir)
    assert call_options(sd3, "", 0.0) == {"negative_prompt": ""}
    assert call_options(sd3, "", 0.0, 64) == {"negative_prompt": "", "max_sequence_length": 64}
    assert call_options(flux, "", 0.0, 256) == {"max_sequence_length": 256}
    with pytest.raises(TexforceError, match="deterministic flow ODE"):
        call_options(flux, "", 1.0)
