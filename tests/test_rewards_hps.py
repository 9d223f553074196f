"""HPS v2: the open_clip → CLIPModel converter reproduces open_clip, and covers the real ViT-H-14 layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import CLIPConfig, CLIPModel

from texforce.rewards.hps import build_vit_h14_config, convert_open_clip_state_dict, load_hps_model

FIXTURES = Path(__file__).parent / "fixtures" / "rewards"


def _tiny_config(spec: dict) -> CLIPConfig:
    vision, text = spec["vision_cfg"], spec["text_cfg"]
    return CLIPConfig(
        text_config={
            "vocab_size": text["vocab_size"],
            "hidden_size": text["width"],
            "intermediate_size": 4 * text["width"],
            "num_hidden_layers": text["layers"],
            "num_attention_heads": text["heads"],
            "max_position_embeddings": text["context_length"],
            "hidden_act": "gelu",
            "eos_token_id": text["vocab_size"] - 1,
        },
        vision_config={
            "hidden_size": vision["width"],
            "intermediate_size": 4 * vision["width"],
            "num_hidden_layers": vision["layers"],
            "num_attention_heads": vision["width"] // vision["head_width"],
            "image_size": vision["image_size"],
            "patch_size": vision["patch_size"],
            "hidden_act": "gelu",
        },
        projection_dim=spec["embed_dim"],
    )


@pytest.fixture(scope="module")
def golden() -> dict:
    return torch.load(FIXTURES / "open_clip_tiny.pt", weights_only=True)


def test_converted_tiny_open_clip_matches_reference_embeddings(golden: dict) -> None:
    model = CLIPModel(_tiny_config(golden["config"])).eval()
    model.load_state_dict(convert_open_clip_state_dict(golden["state_dict"]), strict=True)
    with torch.no_grad():
        image = model.visual_projection(model.vision_model(pixel_values=golden["pixel_values"]).pooler_output)
        text = model.text_projection(model.text_model(input_ids=golden["input_ids"]).pooler_output)
    torch.testing.assert_close(image, golden["image_embeds"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(text, golden["text_embeds"], atol=1e-4, rtol=1e-4)
    assert model.logit_scale.item() == pytest.approx(golden["state_dict"]["logit_scale"].item())


def test_every_vit_h14_key_maps_with_the_right_shape() -> None:
    shapes = json.loads((FIXTURES / "open_clip_vit_h14_keys.json").read_text())
    state_dict = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    converted = convert_open_clip_state_dict(state_dict)
    with torch.device("meta"):
        expected = CLIPModel(build_vit_h14_config()).state_dict()
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in expected.items()}


def test_unknown_key_is_rejected() -> None:
    with pytest.raises(KeyError, match=r"visual\.attnpool"):
        convert_open_clip_state_dict({"visual.attnpool.weight": torch.zeros(1)})


def test_load_hps_model_from_official_checkpoint_layout(tmp_path: Path, golden: dict, monkeypatch) -> None:
    """`load_hps_model` reads `{'state_dict': …}` files; run it on the tiny model with its config swapped in."""
    torch.save({"state_dict": golden["state_dict"]}, tmp_path / "hps.pt")
    monkeypatch.setattr("texforce.rewards.hps.build_vit_h14_config", lambda: _tiny_config(golden["config"]))
    model = load_hps_model(tmp_path / "hps.pt", torch.device("cpu"), torch.float32)
    with torch.no_grad():
        text = model.text_projection(model.text_model(input_ids=golden["input_ids"]).pooler_output)
    torch.testing.assert_close(text, golden["text_embeds"], atol=1e-4, rtol=1e-4)
