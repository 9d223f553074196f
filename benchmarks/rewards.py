"""Throughput of every reward scorer (images/s) at its true architecture, random weights, one process.

    nice -n 10 python -m benchmarks.rewards                          # CPU, fp32, batch 1 and 8
    python -m benchmarks.rewards --device cuda --dtype fp16 --batch-sizes 1 8 32
    python -m benchmarks.rewards --smoke                             # tiny models: checks the harness only

Images are 512x512 (Stable Diffusion's output), so every figure includes the batched resize/crop.
Prints one JSON object per (reward, batch size): images/s, seconds per call, parameters, device, dtype,
torch version and thread count. Weights are random: compute does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from functools import partial
from pathlib import Path

import torch
from transformers import BlipTextConfig, BlipVisionConfig, CLIPConfig, CLIPModel

from benchmarks.timing import append_json_lines, seconds_per_call
from texforce.reward_fn import RewardFn
from texforce.rewards.clip import AestheticReward, CLIPEmbedder, CLIPSimilarityReward, MLPHead
from texforce.rewards.hps import build_vit_h14_config
from texforce.rewards.imagereward import (
    ImageReward,
    ImageRewardModel,
    build_blip_large_configs,
    build_blip_tokenizer,
)
from texforce.rewards.preprocess import ImageTransform

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
REWARD_NAMES = ["clipscore", "aesthetic", "pickscore", "hpsv2", "imagereward", "hand", "face"]
PROMPT = "a photo of a hand waving at the camera, detailed, studio light"


def build_clip_l14_config() -> CLIPConfig:
    """openai/clip-vit-large-patch14 (clipscore and the aesthetic predictor's backbone)."""
    return CLIPConfig(
        text_config={
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
        },
        vision_config={
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "patch_size": 14,
        },
        projection_dim=768,
    )


def build_tiny_clip_config() -> CLIPConfig:
    return CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
        projection_dim=768,
    )


def build_tiny_blip_configs() -> tuple[BlipVisionConfig, BlipTextConfig]:
    vision = BlipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    text = BlipTextConfig(
        vocab_size=30524,
        hidden_size=32,
        encoder_hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        is_decoder=True,
    )
    return vision, text


def build_scorer(name: str, smoke: bool, device: torch.device, dtype: torch.dtype, tmp: Path) -> RewardFn:
    """The scorer `name` at its real architecture (or tiny, for --smoke), with random weights."""
    if name in ("hand", "face"):
        from texforce.rewards.detectors import make_face, make_hand

        return (make_hand if name == "hand" else make_face)(device, dtype)
    if name == "imagereward":
        vocab = tmp / "vocab.txt"  # the tokenizer's cost does not depend on its vocabulary
        vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *PROMPT.split()]) + "\n")
        configs = build_tiny_blip_configs() if smoke else build_blip_large_configs()
        return ImageReward(ImageRewardModel(*configs).to(device, dtype), build_blip_tokenizer(vocab))
    if name in ("clipscore", "aesthetic"):
        config = build_tiny_clip_config() if smoke else build_clip_l14_config()
    else:
        config = build_tiny_clip_config() if smoke else build_vit_h14_config()
    model = CLIPModel(config).to(device, dtype)
    transform = ImageTransform(mode="pad" if name == "hpsv2" else "crop")
    if name == "aesthetic":
        return AestheticReward(CLIPEmbedder(model, transform), MLPHead())
    return CLIPSimilarityReward(CLIPEmbedder(model, transform), use_logit_scale=name == "pickscore")


def count_parameters(scorer: RewardFn) -> int:
    modules = [getattr(scorer, "model", None), getattr(getattr(scorer, "embedder", None), "model", None)]
    modules.append(getattr(scorer, "head", None))
    return sum(p.numel() for m in modules if isinstance(m, torch.nn.Module) for p in m.parameters())


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m benchmarks.rewards`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rewards", nargs="+", choices=REWARD_NAMES, default=REWARD_NAMES)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: fp16 on a GPU, fp32 on the CPU")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--smoke", action="store_true", help="tiny models, 64 px: checks the harness, not speed")
    parser.add_argument("--json", help="append the figures to this JSON-lines file")
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch_sizes, args.repeats, args.image_size = [2], 1, 64
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.rewards:
            torch.manual_seed(0)
            scorer = build_scorer(name, args.smoke, device, dtype, Path(tmp))
            for batch_size in args.batch_sizes:
                images = torch.rand(batch_size, 3, args.image_size, args.image_size, device=device)
                prompts = [PROMPT] * batch_size
                seconds = seconds_per_call(partial(scorer, images, prompts), device, args.repeats)
                figure = {
                    "reward": name,
                    "batch_size": batch_size,
                    "images_per_s": round(batch_size / seconds, 3),
                    "seconds_per_call": round(seconds, 4),
                    "parameters": count_parameters(scorer),
                    "device": torch.cuda.get_device_name(device)
                    if device.type == "cuda"
                    else f"cpu ({os.cpu_count()} cores)",
                    "dtype": str(dtype).removeprefix("torch."),
                    "threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                    "smoke": args.smoke,
                }
                print(json.dumps(figure), flush=True)
                figures.append(figure)
            del scorer
    append_json_lines(args.json, figures)
    return figures


if __name__ == "__main__":
    main()
