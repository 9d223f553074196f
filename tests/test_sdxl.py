"""SDXL: two text encoders conditioned exactly as `StableDiffusionXLPipeline` does, and a trained run's adapters
loading through stock diffusers and PEFT to the same images as texforce's own sampler; sample, fuse and stacking."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_overrides
from diffusers import StableDiffusionXLPipeline
from peft import PeftModel
from safetensors import safe_open

from texforce.adapters.files import fuse_adapter_files, load_text_adapters
from texforce.algorithms.policy import Policy
from texforce.bases.loading import load_pipeline
from texforce.cli.main import main
from texforce.errors import TexforceError
from texforce.run.run_config import load_config
from texforce.run.train import train_run

PROMPTS = ["A photo of a cat", "A photo of a dog"]


def make_policy(model_dir, tmp_path, **extra) -> Policy:
    return Policy(load_config(None, tiny_overrides(model_dir, tmp_path, **extra)), torch.device("cpu"))


def stock(model_dir) -> StableDiffusionXLPipeline:
    pipe = StableDiffusionXLPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stock_images(pipe: StableDiffusionXLPipeline, noise: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM, CFG 5 with the empty negative prompt encoded (as texforce's sampler)."""
    return pipe(
        PROMPTS,
        negative_prompt=[""] * len(PROMPTS),
        num_inference_steps=4,
        guidance_scale=5.0,
        eta=0.0,
        latents=noise,
        output_type="pt",
    ).images


def noise_for(policy: Policy) -> torch.Tensor:
    return policy.initial_noise(len(PROMPTS), torch.Generator().manual_seed(0))


def test_conditioning_is_stock_encode_prompt_and_time_ids(tiny_sdxl_dir, tmp_path):
    policy = make_policy(tiny_sdxl_dir, tmp_path)  # LoRA B = 0 at init: the base encoders
    with torch.no_grad():
        ours = policy.encode(policy.tokenize(PROMPTS))
        negative = policy.negative_embeds(len(PROMPTS))
        embeds, negative_embeds, pooled, negative_pooled = stock(tiny_sdxl_dir).encode_prompt(
            PROMPTS, negative_prompt=[""] * len(PROMPTS), do_classifier_free_guidance=True
        )
    assert ours.prompt_embeds.shape == (2, 77, 64) and ours.pooled_embeds.shape == (2, 32)
    torch.testing.assert_close(ours.prompt_embeds, embeds, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.pooled_embeds, pooled, atol=1e-6, rtol=0)
    torch.testing.assert_close(negative.prompt_embeds, negative_embeds, atol=1e-6, rtol=0)
    torch.testing.assert_close(negative.pooled_embeds, negative_pooled, atol=1e-6, rtol=0)
    assert ours.time_ids.tolist() == [[32.0, 32.0, 0.0, 0.0, 32.0, 32.0]] * 2  # original size, crop, target size
    assert policy.tokenize(PROMPTS).shape == (2, 2 * 77)
    assert policy.tokenize([""])[0, 77:].tolist()[2:] == [0] * 75  # OpenCLIP's tokenizer pads with "!" (id 0)


@pytest.fixture(scope="module")
def sdxl_run(tiny_sdxl_dir, tmp_path_factory):
    """One epoch of DDPO on the tiny SDXL, both text encoders and the U-Net trained."""
    output = tmp_path_factory.mktemp("sdxl_runs")
    return train_run(None, tiny_overrides(tiny_sdxl_dir, output, train__num_epochs=1, unet_lora__use=True), quiet=True)


def test_run_exports_the_canonical_layout_of_both_encoders(sdxl_run):
    lora = sdxl_run / "lora"
    with safe_open(lora / "pytorch_lora_weights.safetensors", "pt") as weights:
        keys = list(weights.keys())
        metadata = json.loads(weights.metadata()["lora_adapter_metadata"])
    for component in ("text_encoder", "text_encoder_2"):
        own = [k for k in keys if k.startswith(f"{component}.")]
        assert len(own) == 2 * 4 * 2 and all(k.startswith(f"{component}.text_model.encoder.layers.") for k in own)
        assert (metadata[f"{component}.r"], metadata[f"{component}.lora_alpha"]) == (16, 16.0)
        assert json.loads((lora / component / "adapter_config.json").read_text())["r"] == 16
    assert any(k.startswith("unet.") for k in keys)


def test_stock_load_lora_weights_gives_texforce_images(sdxl_run, tiny_sdxl_dir, tmp_path):
    """Train → export → `StableDiffusionXLPipeline.load_lora_weights` → the images of texforce's own sampler."""
    policy = make_policy(tiny_sdxl_dir, tmp_path, unet_lora__use=True)
    policy.load_adapters(sdxl_run / "lora")
    noise = noise_for(policy)
    ours = policy.generate(PROMPTS, noise)
    pipe = stock(tiny_sdxl_dir)
    base_embeds = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False)[0]
    base_images = stock_images(pipe, noise)
    pipe.load_lora_weights(sdxl_run / "lora")
    embeds = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False)[0]
    assert (embeds[..., :32] - base_embeds[..., :32]).abs().max() > 1e-4  # each encoder's adapter took effect
    assert (embeds[..., 32:] - base_embeds[..., 32:]).abs().max() > 1e-4
    images = stock_images(pipe, noise)
    assert (images - base_images).abs().max() > 1e-4
    torch.testing.assert_close(images, ours, atol=1e-5, rtol=0)


def test_peft_folders_load_each_encoder(sdxl_run, tiny_sdxl_dir):
    pipe = stock(tiny_sdxl_dir)
    ids = [tokenizer(PROMPTS, padding="max_length", return_tensors="pt").input_ids
           for tokenizer in (pipe.tokenizer, pipe.tokenizer_2)]  # fmt: skip
    stock_loaded = stock(tiny_sdxl_dir)
    stock_loaded.load_lora_weights(sdxl_run / "lora")
    for component, i in (("text_encoder", 0), ("text_encoder_2", 1)):
        with torch.no_grad():
            peft = PeftModel.from_pretrained(getattr(pipe, component), sdxl_run / "lora" / component)
            expected = getattr(stock_loaded, component)(ids[i])[0]
            torch.testing.assert_close(peft(ids[i])[0], expected, atol=1e-6, rtol=0)


def test_sample_cli_stacks_the_run_on_sdxl(sdxl_run, tiny_sdxl_dir, tmp_path, capsys):
    """`texforce sample --text-lora` (both encoders, from the PEFT folders) with `--unet-lora` (the diffusers file)."""
    out = tmp_path / "sdxl.png"
    argv = ["sample", "--model", str(tiny_sdxl_dir), "--prompt", PROMPTS[0], "--steps", "2", "--reward", "none"]
    argv += ["--text-lora", str(sdxl_run), "--unet-lora", str(sdxl_run / "lora" / "pytorch_lora_weights.safetensors")]
    assert main([*argv, "-o", str(out)]) == 0
    assert capsys.readouterr().out.split()[0] == str(out) and out.is_file()
    pipe = load_pipeline(str(tiny_sdxl_dir))
    assert load_text_adapters(pipe, sdxl_run) == ["text_encoder", "text_encoder_2"]


def test_fuse_sums_each_encoders_updates(sdxl_run, tiny_sdxl_dir, tmp_path):
    fused = fuse_adapter_files(str(tiny_sdxl_dir), [sdxl_run, sdxl_run / "lora"], [0.25, 0.75], tmp_path / "fused")
    once, twice = load_pipeline(str(tiny_sdxl_dir)), load_pipeline(str(tiny_sdxl_dir))
    load_text_adapters(once, sdxl_run)
    assert load_text_adapters(twice, fused) == ["text_encoder", "text_encoder_2"]
    layer = "text_model.encoder.layers.0.self_attn.q_proj"
    for component in ("text_encoder", "text_encoder_2"):
        modules = [dict(getattr(p, component).named_modules()) for p in (once, twice)]
        name = layer if layer in modules[0] else layer.removeprefix("text_model.")
        expected = modules[0][name].get_delta_weight("default")  # 0.25 Δ + 0.75 Δ = Δ
        torch.testing.assert_close(modules[1][name].get_delta_weight("default"), expected, atol=1e-6, rtol=1e-5)
        assert json.loads((fused / component / "adapter_config.json").read_text())["r"] == 32


def test_per_encoder_lora_settings(tiny_sdxl_dir, tiny_model_dir, tmp_path):
    policy = make_policy(tiny_sdxl_dir, tmp_path, text_lora__rank=8, text_lora_2__rank=4, text_lora_2__alpha=2)
    configs = [encoder.peft_config["default"] for encoder in policy.text_encoders.values()]
    assert [(c.r, c.lora_alpha) for c in configs] == [(8, 16.0), (4, 2.0)]
    with pytest.raises(TexforceError, match=r"text_lora_2 sets the second CLIP text encoder .* has only one"):
        make_policy(tiny_model_dir, tmp_path, text_lora_2__rank=4)


def test_eval_cli_compares_base_and_the_sdxl_adapter(sdxl_run, tiny_sdxl_dir, tmp_path):
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(tiny_sdxl_dir), "--num-prompts", "1", "--seeds", "1", "--steps", "2"]
    argv += ["--reward", "jpeg_compressibility", "--config", "base", "--config", f"text={sdxl_run}", "-o", str(out)]
    assert main(argv) == 0
    scores = [s["mean"] for s in json.loads((out / "summary.json").read_text())]
    assert len(scores) == 2 and scores[0] != scores[1]
