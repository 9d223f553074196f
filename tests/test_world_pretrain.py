"""`texforce world pretrain` runs every stage end to end on tiny sizes, and its output loads offline."""

from __future__ import annotations

import argparse
import json

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


def test_pretrain_tiny_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _world(["pretrain", "--out", str(tmp_path), "--tiny", "--seed", "1"]) == 0
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tmp_path / "model" / part).is_dir()
    assert (tmp_path / "clip_image" / "text_projection.safetensors").is_file()
    pipeline = StableDiffusionPipeline.from_pretrained(tmp_path / "model", torch_dtype=torch.float32)
    assert pipeline.scheduler.config.steps_offset == 1
    assert pipeline.unet.config.cross_attention_dim == pipeline.text_encoder.config.hidden_size
    with pytest.raises(TexforceError, match="not empty"):
        _world(["pretrain", "--out", str(tmp_path), "--tiny"])


def test_eval_writes_numbers_and_grid(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _world(["pretrain", "--out", str(tmp_path), "--tiny"])
    output, grid = tmp_path / "eval.json", tmp_path / "grid.png"
    argv = ["eval", "--model", str(tmp_path / "model"), "--num-prompts", "2", "--num-seeds", "1"]
    assert _world([*argv, "--num-inference-steps", "2", "--output", str(output), "--grid", str(grid)]) == 0
    record = json.loads(output.read_text())
    assert set(record["alignment"]) == {"single", "count", "relation", "composition"}
    assert record["reward_validation"]["ground_truth"] >= 0.95
    assert grid.stat().st_size > 0
