"""Adapters round-trip through both formats, load others' layouts, and fuse exactly; files in the canonical layout."""

import json
import re
import shutil

import pytest
import torch
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from texforce.adapters.files import fuse_adapters, load_adapter, save_adapters, save_pipeline
from texforce.bases.loading import add_lora, peft_lora_config
from texforce.bases.sd import build_tiny_pipeline, build_tiny_sdxl_pipeline
from texforce.config import LoraConfig, UNetLoraConfig
from texforce.errors import TexforceError


def trained_pipeline(alpha: float = 8.0, seed: int = 1):
    """A tiny pipeline whose LoRAs are non-zero (B perturbed), with alpha != rank to test scaling."""
    pipe = build_tiny_pipeline(image_size=32)
    add_lora(pipe.text_encoder, LoraConfig(alpha=alpha), seed)
    add_lora(pipe.unet, UNetLoraConfig(use=True, rank=4, alpha=2.0), seed + 1)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in (pipe.text_encoder, pipe.unet):
            for name, param in module.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return pipe


def embed(pipe, prompt="a photo of a cat"):
    ids = pipe.tokenizer([prompt], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def images(pipe):
    generator = torch.Generator().manual_seed(0)
    return pipe("a photo of a cat", num_inference_steps=3, generator=generator, output_type="pt").images


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    pipe = trained_pipeline()
    folder = tmp_path_factory.mktemp("adapters")
    save_adapters(folder, {"text_encoder": pipe.text_encoder, "unet": pipe.unet}, "texforce/tiny-random")
    return pipe, folder


def test_layout(saved):
    _, folder = saved
    for name in (
        "pytorch_lora_weights.safetensors",
        "text_encoder/adapter_config.json",
        "text_encoder/adapter_model.safetensors",
        "unet/adapter_config.json",
    ):
        assert (folder / name).is_file()


def test_diffusers_file_has_the_canonical_keys_and_portable_metadata(saved):
    """`text_encoder.text_model.…` (transformers 4's names, which older diffusers need) and only LoRA settings every
    peft's `LoraConfig` takes (diffusers 0.34+ passes them to it)."""
    _, folder = saved
    with safe_open(folder / "pytorch_lora_weights.safetensors", "pt") as handle:
        keys = list(handle.keys())
        metadata = json.loads(handle.metadata()["lora_adapter_metadata"])
    text = [k for k in keys if k.startswith("text_encoder.")]
    assert text and all(k.startswith("text_encoder.text_model.encoder.layers.") for k in text)
    unet = [k for k in keys if k.startswith("unet.")]  # the attention-processor layout diffusers and UIs read
    assert unet and all(re.search(r"\.attn[12]\.processor\.to_(q|k|v|out)_lora\.(down|up)\.weight$", k) for k in unet)
    assert {k.split(".", 1)[1] for k in metadata} == {
        "r", "lora_alpha", "target_modules", "lora_dropout", "rank_pattern", "alpha_pattern"
    }  # fmt: skip
    assert (metadata["text_encoder.r"], metadata["text_encoder.lora_alpha"], metadata["unet.lora_alpha"]) == (16, 8, 2)


@pytest.mark.parametrize("build", [build_tiny_pipeline, build_tiny_sdxl_pipeline])
def test_saved_pipeline_has_the_names_and_tokenizer_files_older_stacks_read(build, tmp_path):
    pipe = build(image_size=32)
    save_pipeline(pipe, tmp_path / "a")
    weights = load_file(tmp_path / "a" / "text_encoder" / "model.safetensors")
    assert all(k.startswith("text_model.") and not k.startswith("text_model.text_model.") for k in weights)
    tokenizers = ["tokenizer", "tokenizer_2"] if hasattr(pipe, "tokenizer_2") else ["tokenizer"]
    for name in tokenizers:
        assert {"vocab.json", "merges.txt"} <= {f.name for f in (tmp_path / "a" / name).iterdir()}
    reloaded = type(pipe).from_pretrained(tmp_path / "a")
    save_pipeline(reloaded, tmp_path / "b")  # transformers 5 re-adds the names of a model it loaded with them
    assert load_file(tmp_path / "b" / "text_encoder" / "model.safetensors").keys() == weights.keys()
    for name in ("text_encoder", *(["text_encoder_2"] if tokenizers[1:] else [])):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(reloaded, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name


def test_stock_diffusers_and_peft_loading_are_exact(saved):
    pipe, folder = saved
    reference_embeds, reference_images = embed(pipe), images(pipe)
    stock = build_tiny_pipeline(image_size=32)
    stock.load_lora_weights(folder)
    assert torch.equal(embed(stock), reference_embeds)
    torch.testing.assert_close(images(stock), reference_images, atol=1e-6, rtol=0)
    plain = build_tiny_pipeline(image_size=32)
    peft_text_encoder = PeftModel.from_pretrained(plain.text_encoder, folder / "text_encoder")
    ids = plain.tokenizer(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(peft_text_encoder(ids)[0], reference_embeds)


@pytest.mark.parametrize("source", ["text_encoder", "pytorch_lora_weights.safetensors", "."])
def test_our_loader_reads_both_formats(saved, source):
    pipe, folder = saved
    fresh = build_tiny_pipeline(image_size=32)
    load_adapter(fresh, folder / source, "text_encoder")
    load_adapter(fresh, folder if source == "." else folder / "unet", "unet")
    assert torch.equal(embed(fresh), embed(pipe))
    torch.testing.assert_close(images(fresh), images(pipe), atol=1e-6, rtol=0)


def test_transformers4_layout_of_official_texforce_adapters(saved, tmp_path):
    """The official release's PEFT keys carry `text_model.` (transformers 4); they must still load."""
    pipe, folder = saved
    old = tmp_path / "sd14_texforce"
    shutil.copytree(folder / "text_encoder", old)
    weights = load_file(old / "adapter_model.safetensors")
    transformers4 = {k: v for k, v in weights.items() if k.startswith("base_model.model.text_model.")}
    assert transformers4 and len(transformers4) == len(weights) // 2  # ours holds both layouts
    save_file(transformers4, old / "adapter_model.safetensors")
    fresh = build_tiny_pipeline(image_size=32)
    load_adapter(fresh, old, "text_encoder")
    assert torch.equal(embed(fresh), embed(pipe))


def test_adapter_of_another_base_is_refused(saved):
    _, folder = saved
    wider = build_tiny_pipeline(image_size=32, cross_attention_dim=64)
    with pytest.raises(TexforceError, match="does not fit"):
        load_adapter(wider, folder / "text_encoder", "text_encoder")
    with pytest.raises(TexforceError, match="no LoRA adapter"):
        load_adapter(wider, folder.parent, "text_encoder")


def test_fuse_is_the_exact_weighted_sum_of_updates(tmp_path):
    pipes = [trained_pipeline(alpha=a, seed=s) for a, s in ((8.0, 1), (16.0, 2))]
    base = build_tiny_pipeline(image_size=32)
    weights = [0.7, -0.4]
    for i, pipe in enumerate(pipes):
        delta = embed(pipe) - embed(base)
        assert delta.abs().max() > 0
        save_adapters(tmp_path / f"a{i}", {"text_encoder": pipe.text_encoder}, "texforce/tiny-random")
        load_adapter(base, tmp_path / f"a{i}", "text_encoder", adapter_name=f"a{i}")
    fuse_adapters(base.text_encoder, ["a0", "a1"], weights)
    base.text_encoder.set_adapter("fused")
    layer = "encoder.layers.0.self_attn.q_proj"
    fused = dict(base.text_encoder.named_modules())[layer].get_delta_weight("fused")
    expected = sum(
        w * dict(p.text_encoder.named_modules())[layer].get_delta_weight("default")
        for w, p in zip(weights, pipes, strict=True)
    )
    torch.testing.assert_close(fused, expected, atol=1e-6, rtol=1e-5)


def test_fuse_refuses_mismatched_ranks():
    pipe = build_tiny_pipeline(image_size=32)
    add_lora(pipe.text_encoder, LoraConfig(rank=4), 0)
    pipe.text_encoder.add_adapter(peft_lora_config(LoraConfig(rank=8)), "other")
    with pytest.raises(TexforceError, match="adapters differ: default has rank 4"):
        fuse_adapters(pipe.text_encoder, ["default", "other"], [0.5, 0.5])
