"""`texforce world pretrain` runs every stage end to end on tiny sizes, and its output loads offline.

One tiny pre-training (seed 1) is shared by the tests that read it, reuse its parts or warm-start from it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline

from texforce.cli import world
from texforce.errors import TexforceError


def _world(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    world.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["world", *argv])
    return args.func(args)


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> Path:
    """`texforce world pretrain --tiny --seed 1`, offline."""
    folder = tmp_path_factory.mktemp("pretrain") / "first"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        assert _world(["pretrain", "--out", str(folder), "--tiny", "--seed", "1"]) == 0
    return folder


def test_pretrain_tiny_end_to_end(first, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (first / "model" / part).is_dir()
    assert (first / "clip_image" / "text_projection.safetensors").is_file()
    pipeline = StableDiffusionPipeline.from_pretrained(first / "model", torch_dtype=torch.float32)
    assert pipeline.scheduler.config.steps_offset == 1
    assert pipeline.unet.config.cross_attention_dim == pipeline.text_encoder.config.hidden_size
    with pytest.raises(TexforceError, match="not empty"):
        _world(["pretrain", "--out", str(first), "--tiny"])


def test_eval_writes_numbers_and_grid(first, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    output, grid = tmp_path / "eval.json", tmp_path / "grid.png"
    argv = ["eval", "--model", str(first / "model"), "--num-prompts", "2", "--num-seeds", "1"]
    assert _world([*argv, "--num-inference-steps", "2", "--output", str(output), "--grid", str(grid)]) == 0
    record = json.loads(output.read_text())
    assert set(record["families"]) == {"single", "count", "relation", "composition"}
    assert set(record["families"]["single"]) == {"world_alignment", "world_quality", "world_score"}
    assert record["reward_validation"]["ground_truth"] >= 0.95
    assert record["quality_validation"]["white/flat/none"]["quality"] == 1.0
    assert grid.stat().st_size > 0


@pytest.mark.parametrize("background", ["white", "tinted", "textured"])
def test_vae_loss_weights_objects_and_their_rim(background):
    import numpy as np

    from texforce.world.degrade import Quality, render_degraded
    from texforce.world.detect import tensor_images
    from texforce.world.models.pretrain import object_weights
    from texforce.world.scenes import place_scene, render_scene, sample_spec

    rng = np.random.default_rng(3)
    scenes = [place_scene(sample_spec(rng, "single"), rng) for _ in range(4)]
    images = np.stack([render_degraded(objects, Quality(background), rng) for objects in scenes])
    weights = object_weights(tensor_images(images) * 2 - 1, 5.0)  # (4, 1, 64, 64)
    on_object = torch.from_numpy(np.stack([(render_scene(o) != 255).any(-1) for o in scenes]))  # (4, 64, 64)
    assert weights.shape == (4, 1, 64, 64)
    assert (weights[:, 0][on_object] == 5).all()
    near = torch.nn.functional.max_pool2d(on_object[:, None].float(), 3, 1, 1)[:, 0].bool()
    assert (weights[:, 0][near & ~on_object] == 5).all() and (near & ~on_object).any()
    assert (weights[:, 0][~near] == 1).all()


def test_pretrain_reuses_an_earlier_clip(first, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    second = tmp_path / "second"
    _world(["pretrain", "--out", str(second), "--tiny", "--seed", "2", "--reuse-clip", str(first)])
    stats = json.loads((second / "model" / "pretrain_stats.json").read_text())
    assert stats["clip_reused"] and "clip_s" not in stats["timings"]
    for part in ("model/text_encoder/model.safetensors", "clip_image/text_projection.safetensors"):
        before, after = load_file(first / part), load_file(second / part)
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before), part
    assert not torch.equal(
        load_file(first / "model/unet/diffusion_pytorch_model.safetensors")["conv_in.weight"],
        load_file(second / "model/unet/diffusion_pytorch_model.safetensors")["conv_in.weight"],
    )
    with pytest.raises(TexforceError, match="missing"):
        _world(["pretrain", "--out", str(tmp_path / "third"), "--tiny", "--reuse-clip", str(tmp_path / "nowhere")])


def test_pretrain_reuses_a_vae_and_warm_starts_the_unet(first, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    second = tmp_path / "second"
    parts = ["--reuse-clip", str(first), "--reuse-vae", str(first), "--init-unet", str(first)]
    _world(["pretrain", "--out", str(second), "--tiny", "--seed", "2", *parts])
    stats = json.loads((second / "model" / "pretrain_stats.json").read_text())
    assert stats["vae_reused"] and stats["warm_started"] == ["unet"] and "vae_s" not in stats["timings"]
    vae = "model/vae/diffusion_pytorch_model.safetensors"
    before, after = load_file(first / vae), load_file(second / vae)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    configs = [json.loads((run / "model/vae/config.json").read_text())["scaling_factor"] for run in (first, second)]
    assert configs[0] == configs[1]  # the latents the warm-started U-Net knows
    with pytest.raises(TexforceError, match="needs the VAE"):
        _world(["pretrain", "--out", str(tmp_path / "third"), "--tiny", "--init-unet", str(first)])
    warm = tmp_path / "warm"
    _world(["pretrain", "--out", str(warm), "--tiny", "--seed", "3", "--warm-start", str(first)])
    stats = json.loads((warm / "model" / "pretrain_stats.json").read_text())
    assert stats["warm_started"] == ["init_clip", "init_vae", "unet"] and "clip_s" in stats["timings"]
    before, after = load_file(first / vae), load_file(warm / vae)
    assert not all(torch.equal(before[k], after[k]) for k in before)  # fine-tuned, not reused


def test_pretrain_refuses_a_reused_clip_of_other_sizes(first, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TexforceError, match=r"text tower has .* the config"):
        _world(["pretrain", "--out", str(tmp_path / "full"), "--reuse-clip", str(first)])
