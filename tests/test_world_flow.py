"""texforce/world-flow: its pre-training resumes to the uninterrupted weights; the T5-less SD3 it makes conditions
and samples exactly as the stock pipeline called with texforce's options; one epoch of backprop trains both CLIP
adapters; the shipped transformer loads."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_overrides
from diffusers import StableDiffusion3Pipeline
from safetensors.torch import load_file

from texforce.adapters.files import save_pipeline
from texforce.algorithms.policy import Policy
from texforce.bases.loading import WORLD_FLOW, call_options, load_pipeline, t5_free_length
from texforce.bases.world import load_world_flow
from texforce.errors import TexforceError
from texforce.run.run_config import load_config
from texforce.run.train import train_run
from texforce.world import WORLD_FLOW_DIR
from texforce.world.models.flow import PROGRESS_FILE, pretrain_flow, tiny_flow_config

PROMPTS = ["a red circle", "two blue squares"]


def _weights(folder):
    return load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def tiny_flow(tmp_path_factory):
    """A tiny world-flow transformer (4 steps), saved as a stock SD3 folder too."""
    root = tmp_path_factory.mktemp("world_flow")
    pretrain_flow(tiny_flow_config(), root / "straight", log=lambda _: None)
    save_pipeline(load_world_flow(root / "straight"), root / "pipeline")
    return root


def test_pretrain_resumes_to_the_uninterrupted_weights(tiny_flow, tmp_path):
    cfg = tiny_flow_config()
    stats = pretrain_flow(cfg, tmp_path, log=lambda _: None, stop_after=2)
    assert stats["steps_done"] == 2 and (tmp_path / PROGRESS_FILE).is_file()
    with pytest.raises(TexforceError, match="another config"):
        pretrain_flow(tiny_flow_config(seed=1), tmp_path, log=lambda _: None)
    stats = pretrain_flow(cfg, tmp_path, log=lambda _: None)
    assert stats["steps_done"] == cfg.steps and not (tmp_path / PROGRESS_FILE).exists()
    straight, resumed = _weights(tiny_flow / "straight"), _weights(tmp_path)
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], atol=0, rtol=0)


def test_t5_free_sd3_matches_the_stock_pipeline(tiny_flow, tmp_path):
    """The world CLIP in both CLIP slots, no T5: no zero T5 tokens (the joint width is the CLIPs'); texforce's
    conditioning and deterministic chain equal the stock pipeline's with `call_options`."""
    folder = tiny_flow / "pipeline"
    pipe = StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.text_encoder_3 is None and t5_free_length(pipe) == 0 and t5_free_length(pipe, 7) == 7
    overrides = tiny_overrides(folder, tmp_path, sample__guidance_scale=4.0)
    policy = Policy(load_config(None, overrides), torch.device("cpu"))
    options = call_options(pipe, [""] * len(PROMPTS), 0.0)
    assert options["max_sequence_length"] == 0
    with torch.no_grad():
        ours = policy.encode(policy.tokenize(PROMPTS))
        embeds, _, pooled, _ = pipe.encode_prompt(
            PROMPTS, None, None, do_classifier_free_guidance=False, max_sequence_length=0
        )
    assert ours.prompt_embeds.shape == (2, 32, 128)
    torch.testing.assert_close(ours.prompt_embeds, embeds, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.pooled_embeds, pooled, atol=1e-6, rtol=0)
    noise = policy.initial_noise(len(PROMPTS), torch.Generator().manual_seed(0))
    theirs = pipe(PROMPTS, latents=noise, num_inference_steps=4, guidance_scale=4.0, output_type="pt", **options)
    torch.testing.assert_close(policy.generate(PROMPTS, noise), theirs.images.float(), atol=1e-4, rtol=0)


def test_backprop_trains_both_clip_adapters(tiny_flow, tmp_path):
    overrides = tiny_overrides(
        tiny_flow / "pipeline",
        tmp_path,
        train__algorithm="backprop",
        reward="world_preference",
        prompts__train="world",
        sample__eta=0.0,
        train__num_epochs=1,
        backprop__num_grad_steps=2,
    )
    run_dir = train_run(None, overrides, quiet=True)
    weights = load_file(str(run_dir / "lora" / "pytorch_lora_weights.safetensors"))
    prefixes = {key.split(".")[0] for key in weights}
    assert prefixes == {"text_encoder", "text_encoder_2"}
    assert all(torch.isfinite(v).all() for v in weights.values())
    for prefix in prefixes:  # LoRA up-projections start at 0: each encoder's moved
        assert any(v.abs().sum() > 0 for k, v in weights.items() if k.startswith(prefix + ".") and ".up." in k)


def test_shipped_world_flow_loads_and_draws():
    assert (WORLD_FLOW_DIR / "README.md").is_file()  # its card ships beside it
    pipe = load_pipeline(WORLD_FLOW)
    assert isinstance(pipe, StableDiffusion3Pipeline) and pipe.text_encoder_3 is None
    assert pipe.text_encoder is not pipe.text_encoder_2  # two copies: each CLIP slot gets its own adapter
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle", num_inference_steps=4, output_type="pt", **call_options(pipe, "", 0.0)).images
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()
