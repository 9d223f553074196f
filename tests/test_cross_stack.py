"""Files every stack loads: the shipped world model and a LoRA file texforce writes give, under our pins, what
transformers 4.57 + diffusers 0.35 gave (golden from tests/fixtures/cross_stack/make_cross_stack_goldens.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from texforce.world import MODEL_DIR
from texforce.world.judges.evaluate import load_world_pipeline

HERE = Path(__file__).parent / "fixtures" / "cross_stack"
spec = importlib.util.spec_from_file_location("make_cross_stack_goldens", HERE / "make_cross_stack_goldens.py")
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)


@pytest.fixture(scope="module")
def golden() -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(script.GOLDEN, "pt") as handle:
        metadata = json.loads(handle.metadata()["golden"])
    return load_file(script.GOLDEN), metadata


def test_the_old_stack_loaded_every_weight_in_one_dtype(golden):
    _, meta = golden
    assert meta["versions"]["transformers"].startswith("4.57.") and meta["versions"]["diffusers"].startswith("0.35.")
    assert meta["text_encoder_missing"] == meta["text_encoder_unexpected"] == []  # not a random text encoder
    assert set(meta["dtypes"].values()) == {"torch.float32"}  # plain from_pretrained, no dtype given
    assert meta["tokenizer"] == "CLIPTokenizer"  # the slow one: built from vocab.json and merges.txt


def test_our_stack_gives_the_old_stacks_ids_embeddings_and_unet_output(golden):
    tensors, _ = golden
    pipe = load_world_pipeline(MODEL_DIR)
    ids = pipe.tokenizer(script.PROMPTS, padding="max_length", return_tensors="pt").input_ids
    assert torch.equal(ids, tensors["input_ids"])
    with torch.no_grad():
        embeds = pipe.text_encoder(ids)[0]
        out = pipe.unet(tensors["latents"], tensors["timestep"], encoder_hidden_states=tensors["embeds"]).sample
    torch.testing.assert_close(embeds, tensors["embeds"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out, tensors["unet_out"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(script.unet_inputs()["latents"], tensors["latents"], atol=0, rtol=0)


def test_our_lora_file_loads_alike_in_both_stacks(golden, tmp_path):
    """The committed adapter is what `save_adapters` writes today, and the old stack read it as ours does."""
    tensors, _ = golden
    script.write_world_lora(tmp_path)
    written = load_file(tmp_path / "pytorch_lora_weights.safetensors")
    committed = load_file(script.LORA_DIR / "pytorch_lora_weights.safetensors")
    assert written.keys() == committed.keys() and all(torch.equal(written[k], committed[k]) for k in written)
    assert all(k.startswith("text_encoder.text_model.encoder.layers.") for k in written)
    pipe = load_world_pipeline(MODEL_DIR)
    pipe.load_lora_weights(script.LORA_DIR)
    with torch.no_grad():
        lora_embeds = pipe.text_encoder(tensors["input_ids"])[0]
    assert (tensors["lora_embeds"] - tensors["embeds"]).abs().max() > 0.1  # the old stack applied it
    torch.testing.assert_close(lora_embeds, tensors["lora_embeds"], atol=1e-5, rtol=1e-5)
