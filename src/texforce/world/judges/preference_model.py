"""The `world_preference` network: a small CNN's 8×8 patch tokens and the frozen world CLIP's text token states,
fused by a small transformer that reads the score off a CLS token, in [0, 1]; its files and card."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from texforce.errors import TexforceError
from texforce.files import save_safetensors
from texforce.world.judges.quality import RAMPS
from texforce.world.scenes import COLORS, IMAGE_SIZE, SHAPES

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OBJECT_TARGETS = len(COLORS) * (len(SHAPES) + 3)  # per colour: a count per shape (or none), centre x and y
DETECTOR_TARGETS = OBJECT_TARGETS + len(RAMPS)  # … and the four quality checks


@dataclass(frozen=True)
class PreferenceModelConfig:
    """The network's sizes; saved as config.json beside the weights."""

    width: int = 96
    num_layers: int = 2
    num_heads: int = 4
    text_hidden_size: int = 64  # the world CLIP text tower's hidden size
    max_text_length: int = 32


class PreferenceModel(nn.Module):
    """Score in [0, 1] of images (B, 3, 64, 64) in [0, 1] given text token states (B, L, H) and their mask (B, L)."""

    def __init__(self, config: PreferenceModelConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride, 1), nn.GroupNorm(8, cout), nn.SiLU()]

        self.image_encoder = nn.Sequential(
            *block(3, 32, 2), *block(32, 64, 2), *block(64, 96, 1), *block(96, w, 2)
        )  # 64×64 → 8×8 patches of width w
        self.image_positions = nn.Parameter(torch.randn(1, (IMAGE_SIZE // 8) ** 2, w) * 0.02)
        self.text_projection = nn.Linear(config.text_hidden_size, w)
        self.text_positions = nn.Parameter(torch.randn(1, config.max_text_length, w) * 0.02)
        self.cls = nn.Parameter(torch.zeros(1, 1, w))
        self.type_embeddings = nn.Parameter(torch.randn(3, w) * 0.02)  # cls, text, image
        layer = nn.TransformerEncoderLayer(w, config.num_heads, 4 * w, dropout=0.0, batch_first=True, norm_first=True)
        self.fusion = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(w), nn.Linear(w, w), nn.SiLU(), nn.Linear(w, 1))
        # training only: what the exact judges see, read off the patches (see `preference.detector_targets`)
        self.objects_head = nn.Sequential(
            nn.Conv2d(w, 16, 1), nn.SiLU(), nn.Flatten(), nn.Linear(16 * (IMAGE_SIZE // 8) ** 2, DETECTOR_TARGETS)
        )

    def patches(self, images: torch.Tensor) -> torch.Tensor:
        """8×8 patch features (B, w, 8, 8) of images (B, 3, H, W) in [0, 1]."""
        if images.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True)
        return self.image_encoder(images * 2 - 1)

    def forward(
        self, images: torch.Tensor, text_states: torch.Tensor, text_mask: torch.Tensor, with_objects: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        features = self.patches(images)
        patches = features.flatten(2).transpose(1, 2)  # (B, 64, w)
        patches = patches + self.image_positions + self.type_embeddings[2]
        length = text_states.shape[1]
        text = self.text_projection(text_states) + self.text_positions[:, :length] + self.type_embeddings[1]
        cls = (self.cls + self.type_embeddings[0]).expand(len(images), -1, -1)
        tokens = torch.cat([cls, text, patches], dim=1)  # (B, 1 + L + 64, w)
        keep = torch.cat([text_mask.new_ones(len(images), 1), text_mask, text_mask.new_ones(patches.shape[:2])], 1)
        hidden = self.fusion(tokens, src_key_padding_mask=~keep.bool())
        scores = torch.sigmoid(self.head(hidden[:, 0]).squeeze(-1))
        return (scores, self.objects_head(features)) if with_objects else scores


class TextStates:
    """Token states (B, L, H) and mask (B, L) of prompts from the frozen world CLIP text tower, cached by prompt."""

    def __init__(self, model_dir: Path | None = None) -> None:
        from transformers import CLIPTextModel

        from texforce.tokenizer import build_clip_tokenizer
        from texforce.world import MODEL_DIR

        folder = Path(model_dir or MODEL_DIR) / "text_encoder"
        self.encoder = CLIPTextModel.from_pretrained(folder, dtype=torch.float32).eval().requires_grad_(False)
        self.tokenizer = build_clip_tokenizer(self.encoder.config.max_position_embeddings)
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = list(dict.fromkeys(p for p in prompts if p not in self.cache))
        for start in range(0, len(missing), 256):
            chunk = missing[start : start + 256]
            tokens = self.tokenizer(chunk, padding="max_length", truncation=True,
                                    max_length=self.tokenizer.model_max_length, return_tensors="pt")  # fmt: skip
            states = self.encoder(input_ids=tokens.input_ids).last_hidden_state
            for prompt, state, mask in zip(chunk, states, tokens.attention_mask, strict=True):
                self.cache[prompt] = (state, mask.bool())
        states, masks = zip(*(self.cache[p] for p in prompts), strict=True)
        return torch.stack(states), torch.stack(masks)


def save_preference_model(model: PreferenceModel, folder: Path, record: dict) -> None:
    """config.json (sizes + the build's record) and model.safetensors (fp16)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_safetensors(state, folder / WEIGHTS_FILE)
    (folder / CONFIG_FILE).write_text(json.dumps({"model": asdict(model.config), **record}, indent=2) + "\n")
    (folder / "README.md").write_text(model_card({"model": asdict(model.config), **record}))


def model_card(record: dict) -> str:
    """The card shipped beside the weights: what the network is, what it was trained on, how well it follows the
    exact judge on prompts it never saw, and how to rebuild it."""
    build, figures, timings = record["build"], record["validation"], record["timings"]
    sampling = build["sampling"]
    return f"""# world_preference: the offline world's ImageReward

A {record["parameters"]:,}-parameter image+text network (8×8 patch tokens of a small CNN, the frozen world CLIP
text tower, a {record["model"]["num_layers"]}-layer transformer over [CLS, text, patches]) that
predicts the exact `world_score` (alignment × quality) of a 64×64 world image for its prompt, in [0, 1].
Differentiable in the image: the learned reward of direct reward backprop (`texforce experiment hacking`).

**Trained on** {record["num_train_judgments"]:,} judgments: {build["num_prompts"]} training-split prompts ×
{build["samples_per_prompt"]} samples of the world model and of randomly perturbed LoRA adapters of it (text
{sampling["text_perturbations"]}, U-Net {sampling["unet_perturbations"]}; CFG {sampling["guidance_scales"]}; eta
{sampling["etas"]}; sampled from the plain prompt, or with positive ({sampling["positive_tags_prob"]:.0%}) or
negative ({sampling["negative_tags_prob"]:.0%}) quality tags, judged against the plain prompt), plus
{build["num_rendered_groups"]} × {build["rendered_per_group"]} rendered scenes of training claims (the true scene,
clean, then near misses or the true scene at random qualities); every image labelled by the exact `world_score`.
Loss: squared error + {build["ranking_weight"]} × within-prompt ranking + {build["objects_weight"]} × predicting
what the exact judges see (counts and centres per colour; the four quality checks). {build["steps"]} steps of
{build["prompts_per_batch"]} prompt groups.

**Validated** on {figures["num_prompts"]} held-out prompts it never saw (held-out phrasings and colour–shape
pairings) × {build["val_samples_per_prompt"]} samples each ({figures["num_images"]} images): Spearman correlation
with the exact `world_score` **{figures["spearman"]:.3f}**; within-prompt pairwise ranking accuracy
**{figures["pairwise_accuracy"]:.3f}** over {figures["num_pairs"]:,} same-prompt pairs whose exact scores differ.
Mean exact {figures["exact_mean"]:.3f}, mean predicted {figures["predicted_mean"]:.3f}.

Rebuild (this build: {timings["judgments_s"] / 60:.0f} min for the judgments, {timings["train_s"] / 60:.0f} min of
training, on 2 CPU cores; `--cache` keeps the sampled judgments, the slow part, for the next build):

    texforce world preference --out DIR --cache DIR_cache

Weights: `model.safetensors` (fp16); sizes and this build's every setting: `config.json`.
"""


def load_preference_model(folder: Path) -> PreferenceModel:
    """The network in fp32, eval mode, frozen."""
    if not (folder / WEIGHTS_FILE).is_file():
        raise TexforceError(f"world_preference weights missing in {folder}; run `texforce world preference`")
    config = PreferenceModelConfig(**json.loads((folder / CONFIG_FILE).read_text())["model"])
    model = PreferenceModel(config)
    model.load_state_dict({k: v.float() for k, v in load_file(str(folder / WEIGHTS_FILE)).items()})
    return model.eval().requires_grad_(False)
