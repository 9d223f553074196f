"""ImageReward: our BLIP-on-transformers model reproduces the reference modules, and maps every official key."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import BlipTextConfig, BlipVisionConfig

from texforce.rewards.imagereward import (
    IMAGEREWARD_MAX_LENGTH,
    REWARD_MEAN,
    REWARD_STD,
    ImageReward,
    ImageRewardModel,
    build_blip_large_configs,
    build_blip_tokenizer,
    convert_imagereward_state_dict,
    load_imagereward_model,
)

FIXTURES = Path(__file__).parent / "fixtures" / "rewards"


def _tiny_configs(spec: dict) -> tuple[BlipVisionConfig, BlipTextConfig]:
    vision = BlipVisionConfig(
        hidden_size=spec["vision_width"],
        intermediate_size=4 * spec["vision_width"],
        num_hidden_layers=spec["vision_layers"],
        num_attention_heads=spec["vision_heads"],
        image_size=spec["image_size"],
        patch_size=spec["patch_size"],
        hidden_act="gelu",
        layer_norm_eps=1e-6,
    )
    text = BlipTextConfig(
        vocab_size=spec["vocab_size"],
        hidden_size=spec["text_width"],
        encoder_hidden_size=spec["vision_width"],
        intermediate_size=spec["text_intermediate"],
        num_hidden_layers=spec["text_layers"],
        num_attention_heads=spec["text_heads"],
        max_position_embeddings=512,
        hidden_act="gelu",
        layer_norm_eps=1e-12,
        is_decoder=True,
    )
    return vision, text


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(FIXTURES / "imagereward_tiny.pt", weights_only=True)


def test_tiny_model_matches_reference_rewards(golden: dict) -> None:
    model = ImageRewardModel(*_tiny_configs(golden["config"])).eval()
    model.load_state_dict(convert_imagereward_state_dict(golden["state_dict"]), strict=True)
    with torch.no_grad():
        image_embeds = model.visual_encoder(pixel_values=golden["pixel_values"]).last_hidden_state
        raw = model(golden["pixel_values"], golden["input_ids"], golden["attention_mask"])
    torch.testing.assert_close(image_embeds, golden["image_embeds"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close((raw - REWARD_MEAN) / REWARD_STD, golden["rewards"], atol=1e-4, rtol=1e-4)


def test_every_official_key_maps_with_the_right_shape() -> None:
    shapes = json.loads((FIXTURES / "imagereward_keys.json").read_text())
    converted = convert_imagereward_state_dict({k: torch.empty(s, device="meta") for k, s in shapes.items()})
    with torch.device("meta"):
        expected = ImageRewardModel(*build_blip_large_configs()).state_dict()
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in expected.items()}


def test_unused_modules_are_skipped_and_unknown_vision_keys_rejected() -> None:
    assert convert_imagereward_state_dict({"blip.text_decoder.bert.x": torch.zeros(1)}) == {}
    with pytest.raises(KeyError, match=r"blip\.visual_encoder\.head"):
        convert_imagereward_state_dict({"blip.visual_encoder.head.weight": torch.zeros(1)})


def test_a_missing_key_fails_loading(tmp_path: Path, golden: dict, monkeypatch) -> None:
    state_dict = dict(golden["state_dict"])
    del state_dict["mlp.layers.7.bias"]
    torch.save(state_dict, tmp_path / "ImageReward.pt")
    monkeypatch.setattr(
        "texforce.rewards.imagereward.build_blip_large_configs", lambda: _tiny_configs(golden["config"])
    )
    with pytest.raises(RuntimeError, match=r"mlp\.layers\.7\.bias"):
        load_imagereward_model(tmp_path / "ImageReward.pt", torch.device("cpu"), torch.float32)


def _write_vocab(path: Path) -> Path:
    words = ["[PAD]", *[f"[unused{i}]" for i in range(80)], "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += ["a", "photo", "of", "hand", "##s", "cat", "the"]
    path.write_text("\n".join(words) + "\n")
    return path


def test_tokenizer_pads_and_truncates_to_35_tokens(tmp_path: Path) -> None:
    tokenizer = build_blip_tokenizer(_write_vocab(tmp_path / "vocab.txt"))
    tokens = tokenizer(
        ["A photo of hands", "the cat " * 40],
        padding="max_length",
        truncation=True,
        max_length=IMAGEREWARD_MAX_LENGTH,
        return_tensors="pt",
    )
    assert tokens.input_ids.shape == (2, 35)
    vocab = tokenizer.get_vocab()
    expected = ["[CLS]", "a", "photo", "of", "hand", "##s", "[SEP]"]
    assert tokens.input_ids[0, :7].tolist() == [vocab[w] for w in expected]
    assert tokens.attention_mask[0].sum() == 7 and tokens.input_ids[0, 7:].eq(vocab["[PAD]"]).all()
    assert tokens.input_ids[1, -1] == vocab["[SEP]"] and tokens.attention_mask[1].all()
    assert vocab["[DEC]"] == len(vocab) - 2 and vocab["[ENC]"] == len(vocab) - 1  # BLIP's extra tokens


def test_scorer_end_to_end_from_official_file_layout(tmp_path: Path, golden: dict, monkeypatch) -> None:
    torch.save(golden["state_dict"], tmp_path / "ImageReward.pt")
    monkeypatch.setattr(
        "texforce.rewards.imagereward.build_blip_large_configs", lambda: _tiny_configs(golden["config"])
    )
    model = load_imagereward_model(tmp_path / "ImageReward.pt", torch.device("cpu"), torch.float32)
    tokenizer = build_blip_tokenizer(_write_vocab(tmp_path / "vocab.txt"))
    reward = ImageReward(model, tokenizer, batch_size=2)
    images = torch.rand(3, 3, 40, 48)
    scores = reward(images, ["a photo of hands", "a cat", "the cat"])
    assert scores.shape == (3,) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
    torch.testing.assert_close(scores[1:2], ImageReward(model, tokenizer)(images[1:2], ["a cat"]))


def test_scorer_runs_in_half_precision(tmp_path: Path, golden: dict, monkeypatch) -> None:
    """The dtype argument reaches every module (bf16 here: the CPU has no fast fp16 kernels)."""
    torch.save(golden["state_dict"], tmp_path / "ImageReward.pt")
    monkeypatch.setattr(
        "texforce.rewards.imagereward.build_blip_large_configs", lambda: _tiny_configs(golden["config"])
    )
    tokenizer = build_blip_tokenizer(_write_vocab(tmp_path / "vocab.txt"))
    images, prompts = torch.rand(2, 3, 32, 32), ["a photo of hands", "a cat"]
    full = ImageReward(
        load_imagereward_model(tmp_path / "ImageReward.pt", torch.device("cpu"), torch.float32), tokenizer
    )
    half = ImageReward(
        load_imagereward_model(tmp_path / "ImageReward.pt", torch.device("cpu"), torch.bfloat16), tokenizer
    )
    assert next(half.model.parameters()).dtype == torch.bfloat16
    torch.testing.assert_close(half(images, prompts), full(images, prompts), atol=0.1, rtol=0.05)
