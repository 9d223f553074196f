"""clipscore, pickscore, aesthetic: registry → weights on disk → scores equal transformers' own CLIP maths."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

from texforce.errors import TexforceError
from texforce.rewards import build_reward
from texforce.rewards.clip import MLPHead
from texforce.tokenizer import build_clip_tokenizer

PROMPTS = ["a photo of a hand", "a portrait of a woman, detailed", "an empty room"]


def _tiny_clip() -> CLIPModel:
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4},
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 224,
            "patch_size": 32,
        },
        projection_dim=768,  # the aesthetic head expects CLIP-L's 768
    )
    return CLIPModel(config).eval()


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `$TEXFORCE_HOME` holding tiny random stand-ins for every CLIP-family weight."""
    root = tmp_path_factory.mktemp("texforce_home")
    model = _tiny_clip()
    model.save_pretrained(root / "clip-vit-large-patch14")
    model.save_pretrained(root / "PickScore_v1")
    (root / "aesthetic").mkdir()
    torch.manual_seed(1)
    torch.save(MLPHead().state_dict(), root / "aesthetic" / "aesthetic-model.pth")
    return root


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(3, 3, 256, 320, generator=torch.Generator().manual_seed(0))


def _reference_logits(model: CLIPModel, images: torch.Tensor) -> torch.Tensor:
    """transformers' CLIP forward on the official processor's inputs, one pair at a time."""
    processor = CLIPImageProcessorPil()
    tokenizer = build_clip_tokenizer()
    logits = []
    for image, prompt in zip(images, PROMPTS, strict=True):
        pil = Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy())
        pixel_values = processor(images=pil, return_tensors="pt").pixel_values
        tokens = tokenizer([prompt], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        with torch.no_grad():
            out = model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=pixel_values)
        logits.append(out.logits_per_image[0, 0])
    return torch.stack(logits)


def test_pickscore_equals_clip_logits_per_image(home: Path, images: torch.Tensor, monkeypatch) -> None:
    monkeypatch.setenv("TEXFORCE_HOME", str(home))
    images = (images * 255).round() / 255  # the reference sees 8-bit pixels
    scores = build_reward("pickscore")(images, PROMPTS).components["pickscore"]
    reference = _reference_logits(CLIPModel.from_pretrained(home / "PickScore_v1").eval(), images)
    assert scores.dtype == torch.float32 and scores.shape == (3,)
    torch.testing.assert_close(scores, reference, atol=2e-3, rtol=1e-3)


def test_clipscore_is_the_cosine(home: Path, images: torch.Tensor, monkeypatch) -> None:
    monkeypatch.setenv("TEXFORCE_HOME", str(home))
    images = (images * 255).round() / 255
    scores = build_reward("clipscore")(images, PROMPTS).total
    model = CLIPModel.from_pretrained(home / "clip-vit-large-patch14").eval()
    reference = _reference_logits(model, images) / model.logit_scale.exp().item()
    torch.testing.assert_close(scores, reference, atol=1e-4, rtol=1e-3)
    assert (scores.abs() <= 1).all()


def test_aesthetic_is_the_mlp_of_the_unit_image_embedding(home: Path, images: torch.Tensor, monkeypatch) -> None:
    monkeypatch.setenv("TEXFORCE_HOME", str(home))
    images = (images * 255).round() / 255
    scores = build_reward("aesthetic")(images, PROMPTS).total
    model = CLIPModel.from_pretrained(home / "clip-vit-large-patch14").eval()
    head = MLPHead()
    head.load_state_dict(torch.load(home / "aesthetic" / "aesthetic-model.pth", weights_only=True))
    head.eval()
    processor = CLIPImageProcessorPil()
    pils = [Image.fromarray((im.permute(1, 2, 0) * 255).round().byte().numpy()) for im in images]
    with torch.no_grad():
        pixel_values = processor(images=pils, return_tensors="pt").pixel_values
        embeds = model.visual_projection(model.vision_model(pixel_values=pixel_values).pooler_output)
        reference = head(embeds / embeds.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(scores, reference, atol=1e-4, rtol=1e-3)


def test_scores_do_not_depend_on_batching(home: Path, images: torch.Tensor, monkeypatch) -> None:
    monkeypatch.setenv("TEXFORCE_HOME", str(home))
    reward = build_reward("pickscore")
    scorer = reward.terms[0][2]
    scorer.batch_size = 2
    together = reward(images, PROMPTS).total
    alone = torch.cat([reward(images[i : i + 1], PROMPTS[i : i + 1]).total for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_weighted_combination_keeps_components(home: Path, images: torch.Tensor, monkeypatch) -> None:
    monkeypatch.setenv("TEXFORCE_HOME", str(home))
    output = build_reward("clipscore:2+aesthetic:0.5")(images, PROMPTS)
    assert set(output.components) == {"clipscore", "aesthetic"}
    expected = 2 * output.components["clipscore"] + 0.5 * output.components["aesthetic"]
    torch.testing.assert_close(output.total, expected)


@pytest.mark.parametrize(
    ("name", "path", "command"),
    [
        (
            "clipscore",
            "clip-vit-large-patch14/",
            "hf download openai/clip-vit-large-patch14 config.json model.safetensors",
        ),
        ("pickscore", "PickScore_v1/", "hf download yuvalkirstain/PickScore_v1"),
        ("hpsv2", "hpsv2/HPS_v2_compressed.pt", "hf download xswu/HPSv2 HPS_v2_compressed.pt"),
        ("hpsv2_1", "hpsv2/HPS_v2.1_compressed.pt", "hf download xswu/HPSv2 HPS_v2.1_compressed.pt"),
        (
            "aesthetic",
            "aesthetic/aesthetic-model.pth",
            "hf download trl-lib/ddpo-aesthetic-predictor aesthetic-model.pth",
        ),
        ("imagereward", "imagereward/ImageReward.pt", "hf download THUDM/ImageReward ImageReward.pt"),
    ],
)
def test_missing_weights_is_one_line_naming_file_place_and_command(
    name: str, path: str, command: str, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("TEXFORCE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(TexforceError) as error:
        build_reward(name)
    message = str(error.value)
    assert "\n" not in message
    assert f"missing weights {path!r}" in message and str(tmp_path / "home") in message
    assert "Hugging Face cache" in message and message.endswith(command)


def test_weights_are_found_in_the_hugging_face_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TEXFORCE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    repo = tmp_path / "hf" / "models--openai--clip-vit-large-patch14"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    _tiny_clip().save_pretrained(repo / "snapshots" / "abc123")
    scores = build_reward("clipscore")(torch.rand(2, 3, 64, 64), PROMPTS[:2]).total
    assert scores.shape == (2,) and torch.isfinite(scores).all()


@pytest.mark.parametrize("name", ["pickscore", "aesthetic"])
def test_scorers_run_in_half_precision(name: str, home: Path, images: torch.Tensor, monkeypatch) -> None:
    """The dtype argument reaches the model and head (bf16 here: the CPU has no fast fp16 kernels)."""
    monkeypatch.setenv("TEXFORCE_HOME", str(home))
    full = build_reward(name)(images, PROMPTS).total
    half = build_reward(name, dtype=torch.bfloat16)(images, PROMPTS).total
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, atol=0.05 * full.abs().max().item(), rtol=0.05)
