"""The shipped world model: loads offline as a standard pipeline and draws 64×64 images."""

from __future__ import annotations

import json

import torch

from texforce.world import CLIP_IMAGE_DIR, MODEL_DIR
from texforce.world.evaluate import load_world_pipeline, sample_images
from texforce.world.reward import WorldAlignmentReward, WorldClipScoreReward


def test_shipped_model_is_small_fp16_and_ddim_offset():
    total = sum(f.stat().st_size for f in MODEL_DIR.rglob("*") if f.is_file())
    assert total < 20 * 2**20
    for weights in MODEL_DIR.rglob("*.safetensors"):
        header_size = int.from_bytes(weights.read_bytes()[:8], "little")
        header = json.loads(weights.read_bytes()[8 : 8 + header_size])
        assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"F16"}, weights
    scheduler = json.loads((MODEL_DIR / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "DDIMScheduler" and scheduler["steps_offset"] == 1


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
