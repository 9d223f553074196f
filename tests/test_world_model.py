"""The shipped world model: loads offline as a standard pipeline, in any stack, and draws 64×64 images."""

from __future__ import annotations

import hashlib
import json
import shutil

import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file
from transformers import CLIPTokenizer

from texforce.world import CLIP_IMAGE_DIR, MODEL_DIR
from texforce.world.judges.evaluate import load_world_pipeline, sample_images
from texforce.world.judges.exact import WorldAlignmentReward
from texforce.world.judges.learned import WorldClipScoreReward


def safetensors_dtypes(weights) -> set[str]:
    header_size = int.from_bytes(weights.read_bytes()[:8], "little")
    header = json.loads(weights.read_bytes()[8 : 8 + header_size])
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def test_shipped_model_is_small_fp32_and_ddim_offset():
    total = sum(f.stat().st_size for f in MODEL_DIR.rglob("*") if f.is_file())
    assert total < 30 * 2**20
    for weights in MODEL_DIR.rglob("*.safetensors"):
        assert safetensors_dtypes(weights) == {"F32"}, weights
    scheduler = json.loads((MODEL_DIR / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DDIMScheduler" and scheduler["steps_offset"] == 1


def test_shipped_weights_are_the_ones_the_card_measured():
    """The v2 weights whose figures the model card, eval.json and the results pages give (digest of the fp32 values
    and names); retraining the world changes it, and then those figures must be measured again."""
    digest = hashlib.sha256()
    for part in ("text_encoder/model.safetensors", "unet/diffusion_pytorch_model.safetensors",
                 "vae/diffusion_pytorch_model.safetensors"):  # fmt: skip
        weights = load_file(MODEL_DIR / part)
        for key in sorted(weights):
            assert weights[key].dtype == torch.float32, key
            digest.update(key.encode())
            digest.update(weights[key].numpy().tobytes())
    assert digest.hexdigest() == "c36a075b0a803b7f1a13122de0f485ab5d254fedc74d5a7749b0666a3726d46e"


def test_shipped_files_load_in_every_stack_and_in_one_dtype(tmp_path):
    """transformers 4 needs the `text_model.` names and vocab.json/merges.txt; a plain `from_pretrained` (no dtype)
    gives fp32 everywhere and runs."""
    assert all(k.startswith("text_model.") for k in load_file(MODEL_DIR / "text_encoder" / "model.safetensors"))
    assert {"vocab.json", "merges.txt", "tokenizer.json"} <= {f.name for f in (MODEL_DIR / "tokenizer").iterdir()}
    pipe = StableDiffusionPipeline.from_pretrained(MODEL_DIR)
    pipe.set_progress_bar_config(disable=True)
    assert {next(m.parameters()).dtype for m in (pipe.unet, pipe.vae, pipe.text_encoder)} == {torch.float32}
    generator = torch.Generator().manual_seed(0)
    images = pipe("a red circle", num_inference_steps=2, generator=generator, output_type="pt").images
    assert images.shape == (1, 3, 64, 64) and torch.isfinite(images).all()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):  # the files transformers 4 reads
        shutil.copy(MODEL_DIR / "tokenizer" / name, tmp_path / name)
    prompts = ["two red circles left of a blue square", "a café, 3 ducks!"]
    ids = CLIPTokenizer.from_pretrained(tmp_path)(prompts, padding="max_length").input_ids
    assert ids == pipe.tokenizer(prompts, padding="max_length").input_ids and len(ids[0]) == 32


def test_shipped_model_loads_offline_and_samples(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipeline = load_world_pipeline()
    assert pipeline.tokenizer.model_max_length == pipeline.text_encoder.config.max_position_embeddings
    assert pipeline.safety_checker is None
    prompts = ["a red circle", "two blue squares"]
    images = sample_images(pipeline, prompts, seed=0, num_inference_steps=4)
    assert images.shape == (2, 3, 64, 64) and torch.isfinite(images).all()
    assert images.min() >= 0 and images.max() <= 1
    scores = WorldAlignmentReward()(images, prompts)
    assert scores.shape == (2,) and ((scores >= 0) & (scores <= 1)).all()


def test_world_clipscore_prefers_the_matching_caption():
    from texforce.world.scenes import render_pool

    images, captions = render_pool(16, seed=7, mix={"single": 1})
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    reward = WorldClipScoreReward(MODEL_DIR, CLIP_IMAGE_DIR)
    matched = reward(pixels, captions)
    swapped = reward(pixels, captions[1:] + captions[:1])
    assert matched.shape == (16,) and matched.dtype == torch.float32
    assert matched.mean() > swapped.mean()


def test_shipped_model_draws_single_objects_and_leaves_headroom():
    """The card's claim on a small sample: single objects well (bar 0.7), relations clearly worse."""
    from texforce.world.scenes import family_prompts

    pipeline = load_world_pipeline()
    reward = WorldAlignmentReward()
    scores = {}
    for family in ("single", "relation"):
        prompts = family_prompts(family, "heldout", 16)
        scores[family] = reward(sample_images(pipeline, prompts, seed=0), prompts).mean().item()
    assert scores["single"] >= 0.7, scores
    assert scores["relation"] <= scores["single"] - 0.2, scores
