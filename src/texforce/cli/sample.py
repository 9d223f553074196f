"""`texforce sample`: stock diffusers inference with a text-encoder LoRA, a U-Net LoRA, or both stacked."""

from __future__ import annotations

import argparse
from pathlib import Path

from texforce.errors import TexforceError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sample",
        help="generate images, optionally with LoRA adapters (the two stack without further training)",
        epilog="examples:\n  texforce sample --prompt 'A photo of a hand' -o hand.png\n"
        "  texforce sample --model CompVis/stable-diffusion-v1-4 --text-lora lora_weights/sd14_texforce \\\n"
        "      --unet-lora lora_weights/sd14_refl --prompt 'a painting of a dog' -n 4 -o dog.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", help="base model: hub id, local folder or built-in (default: the training default)")
    parser.add_argument(
        "--text-lora", metavar="PATH", help="text-encoder adapter: PEFT folder, diffusers file/folder, or run"
    )
    parser.add_argument(
        "--unet-lora", metavar="PATH", help="U-Net adapter: PEFT folder, diffusers file/folder, or run"
    )
    parser.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    parser.add_argument("--prompts", metavar="SET|FILE", help="a built-in prompt set or a prompt file")
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("-n", "--num-images", type=int, default=1, help="images per prompt (seeds seed, seed+1, …)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance-scale", type=float, default=7.5)
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="on GPU; CPU is fp32")
    parser.add_argument("-o", "--output", required=True, help="PNG file (a grid when several images)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from texforce.config import ModelConfig
    from texforce.export import load_adapter
    from texforce.images import make_grid, save_png
    from texforce.models import prepare_pipeline, resolve_device
    from texforce.prompts import load_prompt_set

    if not args.output.lower().endswith(".png"):
        raise TexforceError(f"--output must be a .png file, got {args.output}")
    if args.num_images < 1 or args.steps < 1:
        raise TexforceError("--num-images and --steps must be >= 1")
    prompts = list(args.prompt or [])
    if args.prompts:
        prompts += list(load_prompt_set(args.prompts).train)
    if not prompts:
        raise TexforceError("give --prompt TEXT or --prompts SET|FILE")
    device = resolve_device(args.device)
    pipe = prepare_pipeline(ModelConfig(base=args.model or ModelConfig().base, dtype=args.dtype), device)
    if args.text_lora:
        load_adapter(pipe, args.text_lora, "text_encoder")
    if args.unet_lora:
        load_adapter(pipe, args.unet_lora, "unet")
    pipe.to(device)
    images = []
    for prompt in prompts:
        for i in range(args.num_images):
            generator = torch.Generator().manual_seed(args.seed + i)
            output = pipe(
                prompt,
                negative_prompt=args.negative_prompt or None,
                num_inference_steps=args.steps,
                guidance_scale=args.guidance_scale,
                eta=args.eta,
                generator=generator,
                output_type="pt",
            )
            images.append(output.images[0])
    save_png(make_grid(torch.stack(images).float().cpu(), columns=args.num_images), Path(args.output))
    print(args.output)
    return 0
