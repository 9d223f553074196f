"""`world_preference`: the world's ImageReward — a small image+text network trained on judged *generated* images.

ImageReward was trained on human rankings of images that diffusion models generated for real prompts. Here the
judge is the exact `world_alignment` and the images come from the world model itself:

1. **Judgments** (`sample_all_judgments`, `render_judgments`): the world model (and randomly perturbed LoRA
   adapters of its text encoder and U-Net, for diversity) samples each of `num_prompts` training-split prompts
   `samples_per_prompt` times; rendered scenes of training-split claims, each captioned truly or showing a near miss
   (a colour, shape, count or relation changed, or an extra object), are added. Every image is labelled with its
   exact alignment.
2. **Model** (`PreferenceModel`): a small CNN turns the 64×64 image into 8×8 patch tokens; the frozen text tower
   of the world CLIP turns the prompt into token states; a small transformer over [CLS, text, patches] reads
   the score off CLS, in [0, 1]. Differentiable in the image, so it can drive direct reward backprop.
3. **Training** (`train_preference`): mean squared error plus a within-prompt pairwise ranking loss, and, for the
   image side only, an auxiliary loss: predict what the exact judge's detector finds (`object_targets`).
4. **Validation** (`validate_preference`): on held-out prompts it never saw (held-out split and held-out
   colour–shape pairings), sampled the same way: Spearman correlation with the exact reward and the share of
   same-prompt pairs it orders as the exact reward does.

    texforce world preference --out src/texforce/world/assets/preference
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from texforce.errors import TexforceError
from texforce.world.scenes import (
    COLORS,
    IMAGE_SIZE,
    RELATIONS,
    SEEN_PAIRS,
    SHAPES,
    PlacedObject,
    SceneSpec,
    caption_spec,
    family_prompts,
    make_caption,
    parse_prompt,
    place_scene,
    render_scene,
    sample_spec,
    spec_split,
)

Log = Callable[[str], None]
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OBJECT_TARGETS = len(COLORS) * (len(SHAPES) + 3)  # per colour: a count per shape (or none), centre x and y
JUDGED_FAMILIES = {"single": 0.2, "count": 0.35, "relation": 0.45}  # the share of prompts of each family


@dataclass
class PreferenceConfig:
    """Every number of one `world_preference` build; the defaults built the shipped model."""

    seed: int = 0
    # judgments of generated images
    num_prompts: int = 1536
    samples_per_prompt: int = 8
    # random LoRA perturbations (std of B): mostly the neighbourhood a fine-tuned adapter explores, some far off
    text_perturbations: tuple[float, ...] = (0.0, 0.0, 0.02, 0.05, 0.1, 0.2)
    unet_perturbations: tuple[float, ...] = (0.0, 0.0, 0.0, 0.03, 0.06, 0.15)
    guidance_scales: tuple[float, ...] = (4.0, 5.0, 6.0)
    etas: tuple[float, ...] = (0.0, 1.0)
    num_steps: int = 20
    # rendered scenes, true or near-miss captions
    num_rendered_groups: int = 6144  # cheap: no sampling, so many more claims than the sampled judgments
    rendered_per_group: int = 8
    # validation on held-out prompts
    num_val_prompts: int = 192
    val_samples_per_prompt: int = 8
    # the network
    width: int = 96
    num_layers: int = 2
    num_heads: int = 4
    # training
    steps: int = 6000
    prompts_per_batch: int = 8  # groups of one prompt's images: the ranking loss compares within a group
    learning_rate: float = 1e-3
    ranking_weight: float = 0.5
    objects_weight: float = 1.0  # auxiliary loss: predict what the exact judge's detector sees
    num_threads: int = 2

    def validate(self) -> None:
        for name in ("num_prompts", "samples_per_prompt", "num_val_prompts", "steps", "prompts_per_batch"):
            if getattr(self, name) < 1:
                raise TexforceError(f"{name} must be at least 1")
        if self.samples_per_prompt < 2 or self.rendered_per_group < 2:
            raise TexforceError("samples_per_prompt and rendered_per_group must be at least 2 (ranking pairs)")


def tiny_preference_config(seed: int = 0) -> PreferenceConfig:
    """A seconds-long smoke build of every stage."""
    return PreferenceConfig(
        seed=seed,
        num_prompts=4,
        samples_per_prompt=2,
        num_steps=2,
        num_rendered_groups=4,
        rendered_per_group=2,
        num_val_prompts=4,
        val_samples_per_prompt=2,
        width=32,
        num_layers=1,
        steps=2,
        prompts_per_batch=2,
    )


# ---------------------------------------------------------------------------------------------- judgments
@dataclass
class Judgments:
    """Judged images in groups of one prompt: images uint8 (N, 64, 64, 3), prompts (N), scores (N,),
    group (N,) int (same group = same prompt), source (N,) int (0 generated, 1 rendered)."""

    images: np.ndarray
    prompts: list[str]
    scores: np.ndarray
    group: np.ndarray
    source: np.ndarray

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(tmp, images=self.images, prompts=np.array(self.prompts), scores=self.scores, group=self.group,
                 source=self.source)  # fmt: skip
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Judgments:
        data = np.load(path)
        return cls(data["images"], data["prompts"].tolist(), data["scores"], data["group"], data["source"])

    @classmethod
    def concat(cls, parts: Sequence[Judgments]) -> Judgments:
        offsets = np.cumsum([0] + [int(p.group.max()) + 1 if len(p.group) else 0 for p in parts[:-1]])
        return cls(
            np.concatenate([p.images for p in parts]),
            [q for p in parts for q in p.prompts],
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.group + o for p, o in zip(parts, offsets, strict=True)]),
            np.concatenate([p.source for p in parts]),
        )


def judged_prompts(split: str, num: int, seed: int) -> list[str]:
    """`num` prompts of `split` drawn from the judged families (for `heldout`, held-out pairings too)."""
    families = dict(JUDGED_FAMILIES)
    if split == "heldout":
        families = {"single": 0.15, "count": 0.3, "relation": 0.35, "composition": 0.2}
    counts = {f: round(num * w) for f, w in families.items()}
    counts[next(iter(counts))] += num - sum(counts.values())
    prompts = [p for f, n in counts.items() for p in family_prompts(f, split, n, seed=seed + 17)]
    return prompts


def _perturbed_pipeline(pipeline, text_std: float, unet_std: float, generator: torch.Generator) -> None:
    """Set the random LoRA adapters of the pipeline's text encoder and U-Net to fresh draws of the given std."""
    for module, std in ((pipeline.text_encoder, text_std), (pipeline.unet, unet_std)):
        with torch.no_grad():
            for name, param in module.named_parameters():
                if "lora_A" in name:
                    param.normal_(0, 1 / math.sqrt(param.shape[0]), generator=generator)
                elif "lora_B" in name:
                    param.normal_(0, 1, generator=generator).mul_(std)


def add_perturbation_adapters(pipeline) -> None:
    """Attach rank-16 LoRA adapters (zero until `_perturbed_pipeline` draws them) to text encoder and U-Net."""
    from peft import LoraConfig

    from texforce.config import TEXT_LORA_TARGETS, UNET_LORA_TARGETS

    for module, targets in ((pipeline.text_encoder, TEXT_LORA_TARGETS), (pipeline.unet, UNET_LORA_TARGETS)):
        module.add_adapter(LoraConfig(r=16, lora_alpha=16, target_modules=list(targets), init_lora_weights=False))


@torch.no_grad()
def sample_judgments(
    pipeline, prompts: Sequence[str], samples_per_prompt: int, cfg: PreferenceConfig, seed: int, log: Log
) -> Judgments:
    """Sample every prompt `samples_per_prompt` times, each prompt under its own perturbation, guidance scale and
    eta; judge each image with the exact reward."""
    from texforce.world.evaluate import sample_images
    from texforce.world.reward import WorldAlignmentReward

    reward = WorldAlignmentReward()
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    chunk = max(1, 64 // samples_per_prompt)  # prompts per sampling call (one perturbation each call)
    images, scores, names = [], [], []
    started = time.perf_counter()
    for start in range(0, len(prompts), chunk):
        batch = [p for p in prompts[start : start + chunk] for _ in range(samples_per_prompt)]
        text_std, unet_std = rng.choice(cfg.text_perturbations), rng.choice(cfg.unet_perturbations)
        _perturbed_pipeline(pipeline, text_std, unet_std, generator)
        pictures = sample_images(
            pipeline,
            batch,
            seed=seed * 1000 + start,
            num_inference_steps=cfg.num_steps,
            guidance_scale=float(rng.choice(cfg.guidance_scales)),
            eta=float(rng.choice(cfg.etas)),
        )
        scores.append(reward(pictures, batch).numpy())
        images.append((pictures.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8))
        names += batch
        done = min(start + chunk, len(prompts))
        if done == len(prompts) or (start // chunk) % 10 == 0:
            log(f"sampled {done * samples_per_prompt}/{len(prompts) * samples_per_prompt} images "
                f"({time.perf_counter() - started:.0f}s)")  # fmt: skip
    group = np.repeat(np.arange(len(prompts)), samples_per_prompt)
    return Judgments(np.concatenate(images), names, np.concatenate(scores), group, np.zeros(len(names), np.int64))


def near_miss(spec: SceneSpec, rng: np.random.Generator) -> SceneSpec:
    """`spec` with one thing changed: a colour, a shape, a count, the relation, or the objects' order."""
    objects = list(spec.objects)
    i = int(rng.integers(len(objects)))
    o = objects[i]
    kind = rng.choice(["color", "shape", "count", "relation"])
    if kind == "count" and o.count > 1:
        objects[i] = replace(o, count=int(rng.choice([c for c in (1, 2, 3, 4) if c != o.count])))
    elif kind == "relation" and spec.relation is not None:
        return SceneSpec(spec.objects, str(rng.choice([r for r in RELATIONS if r != spec.relation])))
    elif kind == "shape":
        shapes = [s for c, s in SEEN_PAIRS if c == o.color and s != o.shape]
        objects[i] = replace(o, shape=str(rng.choice(shapes))) if shapes else o
    else:
        colors = [c for c, s in SEEN_PAIRS if s == o.shape and c != o.color]
        objects[i] = replace(o, color=str(rng.choice(colors)))
    if len(objects) == 2 and (objects[0].color, objects[0].shape) == (objects[1].color, objects[1].shape):
        return spec  # the change made both objects equal: keep the true scene
    return SceneSpec(tuple(objects), spec.relation)


def _extra_object(placed: list[PlacedObject], rng: np.random.Generator) -> list[PlacedObject]:
    color, shape = SEEN_PAIRS[int(rng.integers(len(SEEN_PAIRS)))]
    for _ in range(50):
        side = 12
        cx, cy = rng.uniform(8, IMAGE_SIZE - 8, size=2)
        if all(abs(cx - o.cx) > (side + o.side) / 2 + 2 or abs(cy - o.cy) > (side + o.side) / 2 + 2 for o in placed):
            return [*placed, PlacedObject(color, shape, side, float(cx), float(cy))]
    return placed


def render_judgments(num_groups: int, per_group: int, seed: int) -> Judgments:
    """Groups of rendered scenes sharing one caption (a training-split claim): the captioned scene itself (first of
    the group) and near misses of it or the scene with an extra object; each judged by the exact reward."""
    from texforce.world.reward import WorldAlignmentReward

    rng = np.random.default_rng(seed)
    names = list(JUDGED_FAMILIES)
    weights = np.array(list(JUDGED_FAMILIES.values()))
    images, prompts = [], []
    while len(prompts) < num_groups * per_group:
        spec = sample_spec(rng, names[rng.choice(len(names), p=weights / weights.sum())])
        claim = caption_spec(rng, spec, keep_size=0.5, keep_position=0.5)
        if spec_split(claim) != "train":  # held-out claims stay unseen, as in the sampled judgments
            continue
        caption = make_caption(claim, rng)
        for k in range(per_group):
            drawn = spec if k == 0 or rng.random() < 0.15 else near_miss(spec, rng)
            placed = place_scene(drawn, rng)
            if k > 0 and rng.random() < 0.2:
                placed = _extra_object(placed, rng)
            images.append(render_scene(placed))
            prompts.append(caption)
    images = np.stack(images)
    judge, chunk = WorldAlignmentReward(), 1024  # in chunks: the detector's maps of every image at once do not fit
    scores = np.concatenate(
        [judge(_pixels(images[i : i + chunk]), prompts[i : i + chunk]).numpy() for i in range(0, len(images), chunk)]
    )
    group = np.repeat(np.arange(num_groups), per_group)
    return Judgments(images, prompts, scores, group, np.ones(len(prompts), np.int64))


def sample_all_judgments(cfg: PreferenceConfig, model_dir: Path | None, log: Log) -> tuple[Judgments, Judgments]:
    """The sampled judgments: of training-split prompts (to train on) and of held-out prompts (to validate on)."""
    from texforce.world.evaluate import load_world_pipeline

    pipeline = load_world_pipeline(model_dir)
    add_perturbation_adapters(pipeline)
    train_prompts = judged_prompts("train", cfg.num_prompts, cfg.seed)
    val_prompts = judged_prompts("heldout", cfg.num_val_prompts, cfg.seed)
    overlap = {str(parse_prompt(p)) for p in train_prompts} & {str(parse_prompt(p)) for p in val_prompts}
    if overlap:
        raise TexforceError(f"{len(overlap)} validation claims are also training claims")
    log(f"judging {len(train_prompts)} training prompts × {cfg.samples_per_prompt} samples")
    generated = sample_judgments(pipeline, train_prompts, cfg.samples_per_prompt, cfg, cfg.seed, log)
    log(f"judging {len(val_prompts)} held-out prompts × {cfg.val_samples_per_prompt} samples")
    validation = sample_judgments(pipeline, val_prompts, cfg.val_samples_per_prompt, cfg, cfg.seed + 2, log)
    return generated, validation


# ---------------------------------------------------------------------------------------------- the network
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
        # training only: what the exact judge's detector sees, read off the patches (see `object_targets`)
        self.objects_head = nn.Sequential(
            nn.Conv2d(w, 16, 1), nn.SiLU(), nn.Flatten(), nn.Linear(16 * (IMAGE_SIZE // 8) ** 2, OBJECT_TARGETS)
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
    save_file(state, str(folder / WEIGHTS_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps({"model": asdict(model.config), **record}, indent=2) + "\n")
    (folder / "README.md").write_text(model_card({"model": asdict(model.config), **record}))


def model_card(record: dict) -> str:
    """The card shipped beside the weights: what the network is, what it was trained on, how well it follows the
    exact judge on prompts it never saw, and how to rebuild it."""
    build, figures, timings = record["build"], record["validation"], record["timings"]
    return f"""# world_preference: the offline world's ImageReward

A {record["parameters"]:,}-parameter image+text network (8×8 patch tokens of a small CNN, the frozen world CLIP
text tower, a {record["model"]["num_layers"]}-layer transformer over [CLS, text, patches]) that
predicts the exact `world_alignment` of a 64×64 world image for its prompt, in [0, 1]. Differentiable in the image:
the learned reward of direct reward backprop (`texforce train world_hacking`, `texforce experiment hacking`).

**Trained on** {record["num_train_judgments"]:,} judgments: {build["num_prompts"]} training-split prompts ×
{build["samples_per_prompt"]} samples of the world model and of randomly perturbed LoRA adapters of it (text
{build["text_perturbations"]}, U-Net {build["unet_perturbations"]}; CFG {build["guidance_scales"]}; eta
{build["etas"]}), plus {build["num_rendered_groups"]} × {build["rendered_per_group"]} rendered scenes of training
claims captioned truly or with a near miss; every image labelled by the exact `world_alignment`. Loss: squared
error + {build["ranking_weight"]} × within-prompt ranking + {build["objects_weight"]} × predicting what the exact
judge's detector finds (counts and centres per colour). {build["steps"]} steps of {build["prompts_per_batch"]}
prompt groups.

**Validated** on {figures["num_prompts"]} held-out prompts it never saw (held-out phrasings and colour–shape
pairings) × {build["val_samples_per_prompt"]} samples each ({figures["num_images"]} images): Spearman correlation
with the exact reward **{figures["spearman"]:.3f}**; within-prompt pairwise ranking accuracy
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


# ---------------------------------------------------------------------------------------------- training
def _pixels(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def object_targets(images: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    """Auxiliary targets (N, OBJECT_TARGETS): what the exact reward's detector finds in each image — per palette
    colour, the number of its objects of each shape (circle, square, triangle, none) and their mean centre (x, y in
    [0, 1]; -1 when the colour is absent). Learning to see them first makes the score's data go much further."""
    from texforce.world.reward import detect_objects

    colors, shapes = list(COLORS), [*SHAPES, None]
    targets = np.zeros((len(images), len(colors), len(shapes) + 2), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        for i, objects in enumerate(detect_objects(_pixels(images[start : start + batch_size])), start):
            for c, color in enumerate(colors):
                mine = [o for o in objects if o.color == color]
                for o in mine:
                    targets[i, c, shapes.index(o.shape)] += 1
                centre = (np.mean([o.cx for o in mine]), np.mean([o.cy for o in mine])) if mine else (-IMAGE_SIZE,) * 2
                targets[i, c, -2:] = np.array(centre) / IMAGE_SIZE
    return torch.from_numpy(targets.reshape(len(images), -1))


def objects_loss(predicted: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Squared error of the per-colour shape counts, plus that of the centres of the colours actually present."""
    predicted, targets = predicted.view(len(predicted), len(COLORS), -1), targets.view(len(targets), len(COLORS), -1)
    counts = F.mse_loss(predicted[..., :-2], targets[..., :-2])
    present = targets[..., :-2].sum(-1) > 0
    if not present.any():
        return counts
    return counts + ((predicted[..., -2:] - targets[..., -2:]) ** 2).sum(-1)[present].mean()


def ranking_loss(predictions: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Logistic loss over same-group pairs whose targets differ: the better image should score higher."""
    same = groups[:, None] == groups[None, :]
    better = (targets[:, None] - targets[None, :]) > 1e-6
    pairs = same & better
    if not pairs.any():
        return predictions.sum() * 0
    margin = (predictions[:, None] - predictions[None, :])[pairs]
    return F.softplus(-margin * 10).mean()


def train_preference(
    cfg: PreferenceConfig, data: Judgments, text: TextStates, log: Log, validation: Judgments | None = None
) -> PreferenceModel:
    """Mean squared error + `ranking_weight` × within-group ranking loss + `objects_weight` × the auxiliary objects
    loss; batches of whole groups, half generated and half rendered."""
    started_all = time.perf_counter()
    torch.manual_seed(cfg.seed)
    text_config = text.encoder.config
    sizes = PreferenceModelConfig(
        cfg.width, cfg.num_layers, cfg.num_heads, text_config.hidden_size, text_config.max_position_embeddings
    )
    model = PreferenceModel(sizes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.01)
    warmup = max(1, cfg.steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps)))
    )
    by_source = [
        [np.flatnonzero(data.group == g) for g in np.unique(data.group[data.source == source])]
        for source in np.unique(data.source)
    ]  # groups of generated images, groups of rendered ones: every batch takes half of its groups from each
    states, masks = text(data.prompts)  # (N, L, H), (N, L): every prompt once
    objects = object_targets(data.images)  # (N, OBJECT_TARGETS)
    log(f"detected the objects of {len(objects)} images ({time.perf_counter() - started_all:.0f}s)")
    rng = np.random.default_rng(cfg.seed)
    started = time.perf_counter()
    for step in range(cfg.steps):
        shares = np.array_split(np.arange(cfg.prompts_per_batch), len(by_source))
        picks = [g[i] for g, share in zip(by_source, shares, strict=True) for i in rng.choice(len(g), len(share))]
        rows = np.concatenate(picks)
        targets = torch.from_numpy(data.scores[rows]).float()
        predictions, seen = model(_pixels(data.images[rows]), states[rows], masks[rows], with_objects=True)
        mse = F.mse_loss(predictions, targets)
        rank = ranking_loss(predictions, targets, torch.from_numpy(data.group[rows]))
        loss = mse + cfg.ranking_weight * rank + cfg.objects_weight * objects_loss(seen, objects[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step == 0 or (step + 1) % max(1, cfg.steps // 20) == 0 or step + 1 == cfg.steps:
            message = f"step {step + 1}/{cfg.steps} mse {mse.item():.4f} rank {rank.item():.3f}"
            if validation is not None and ((step + 1) % max(1, cfg.steps // 5) == 0 or step + 1 == cfg.steps):
                figures = validate_preference(model, validation, text)
                held_out = f"spearman {figures['spearman']:.3f} pairwise {figures['pairwise_accuracy']:.3f}"
                message += f" | held-out {held_out}"
                model.train()
            log(f"{message} ({time.perf_counter() - started:.0f}s)")
    return model.eval().requires_grad_(False)


def _ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank), for Spearman's correlation."""
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values))
    for value in np.unique(values):
        tied = values == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson's on average ranks)."""
    ra, rb = _ranks(np.asarray(a, np.float64)), _ranks(np.asarray(b, np.float64))
    return float(np.corrcoef(ra, rb)[0, 1])


def pairwise_accuracy(predicted: np.ndarray, exact: np.ndarray, group: np.ndarray) -> tuple[float, int]:
    """Share of same-group pairs with different exact scores that `predicted` orders the same way (ties: half)."""
    correct, total = 0.0, 0
    for g in np.unique(group):
        rows = np.flatnonzero(group == g)
        e, p = exact[rows], predicted[rows]
        better = e[:, None] - e[None, :] > 1e-6
        diff = p[:, None] - p[None, :]
        correct += float((diff[better] > 0).sum() + 0.5 * (diff[better] == 0).sum())
        total += int(better.sum())
    return correct / max(total, 1), total


@torch.no_grad()
def predict(model: PreferenceModel, data: Judgments, text: TextStates, batch_size: int = 256) -> np.ndarray:
    model.eval()
    out = []
    for start in range(0, len(data.prompts), batch_size):
        states, masks = text(data.prompts[start : start + batch_size])
        out.append(model(_pixels(data.images[start : start + batch_size]), states, masks).numpy())
    return np.concatenate(out)


def validate_preference(model: PreferenceModel, data: Judgments, text: TextStates) -> dict[str, float]:
    """Spearman with the exact reward and within-prompt pairwise accuracy, on `data` (held-out prompts)."""
    predicted = predict(model, data, text)
    accuracy, pairs = pairwise_accuracy(predicted, data.scores, data.group)
    return {
        "spearman": spearman(predicted, data.scores),
        "pairwise_accuracy": accuracy,
        "num_pairs": pairs,
        "num_images": len(data.prompts),
        "num_prompts": len(np.unique(data.group)),
        "exact_mean": float(data.scores.mean()),
        "predicted_mean": float(predicted.mean()),
    }


def build_preference(
    cfg: PreferenceConfig, out_dir: Path, model_dir: Path | None = None, cache: Path | None = None, log: Log = print
) -> dict:
    """Judge, train, validate and save `world_preference` into `out_dir`. `cache` keeps the sampled judgments (npz,
    the expensive part) for another build; the rendered ones are redrawn, deterministically, every time."""
    cfg.validate()
    torch.set_num_threads(cfg.num_threads)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    train_path, val_path = (cache / "train.npz", cache / "validation.npz") if cache else (None, None)
    if train_path is not None and train_path.is_file() and val_path.is_file():
        generated, validation = Judgments.load(train_path), Judgments.load(val_path)
        log(f"sampled judgments loaded from {cache}")
    else:
        generated, validation = sample_all_judgments(cfg, model_dir, log)
        if cache is not None:
            generated.save(train_path)
            validation.save(val_path)
    rendered = render_judgments(cfg.num_rendered_groups, cfg.rendered_per_group, cfg.seed + 1)
    data = Judgments.concat([generated, rendered])
    timings["judgments_s"] = time.perf_counter() - started
    log(f"{len(data.prompts)} training judgments (mean exact {data.scores.mean():.3f}), "
        f"{len(validation.prompts)} held-out")  # fmt: skip
    started = time.perf_counter()
    text = TextStates(model_dir)
    model = train_preference(cfg, data, text, log, validation)
    timings["train_s"] = time.perf_counter() - started
    figures = validate_preference(model, validation, text)
    record = {
        "build": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
        "validation": figures,
        "num_train_judgments": len(data.prompts),
        "timings": {k: round(v, 1) for k, v in timings.items()},
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    save_preference_model(model, out_dir, record)
    log(f"held-out: spearman {figures['spearman']:.3f}, pairwise accuracy {figures['pairwise_accuracy']:.3f} "
        f"({figures['num_pairs']} pairs); saved {out_dir}")  # fmt: skip
    return record


__all__ = [
    "PreferenceConfig",
    "PreferenceModel",
    "build_preference",
    "load_preference_model",
]
