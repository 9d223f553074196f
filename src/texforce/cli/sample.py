"""`texforce sample`: stock diffusers inference with a text-encoder LoRA, a U-Net LoRA, or both stacked."""

from __future__ import annotations

import argparse
from pathlib import Path

from texforce.errors import TexforceError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sample",
        help="generate images, optionally with LoRA adapters (the two stack without further training)",
        description="Generate images and score them; writes each image and a grid captioned with prompt and score. "
        "Without --model the base is the one the adapter records, else the offline world (texforce/world); "
        "steps, guidance and reward default to what fits that base.",
        epilog="examples:\n  texforce sample --prompt 'two red circles' -n 4 -o circles.png\n"
        "  texforce sample --text-lora runs/X/lora --prompts world -o world.png\n"
        "  texforce sample --model CompVis/stable-diffusion-v1-4 --text-lora lora_weights/sd14_texforce \\\n"
        "      --unet-lora lora_weights/sd14_refl --prompt 'a painting of a dog' -n 4 -o dog.png",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", help="base model: hub id, local folder or built-in (default: the adapter's, else "
                        "the offline world)")  # fmt: skip
    parser.add_argument(
        "--text-lora",
        metavar="PATH",
        help="text-encoder adapter (SDXL: both encoders'): PEFT folder, diffusers file/folder, or run",
    )
    parser.add_argument(
        "--unet-lora", metavar="PATH", help="U-Net adapter: PEFT folder, diffusers file/folder, or run"
    )
    parser.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    parser.add_argument("--prompts", metavar="SET|FILE", help="a built-in prompt set or a prompt file")
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("-n", "--num-images", type=int, default=1, help="images per prompt (seeds seed, seed+1, …)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="sampler steps (default: the base's; see the line printed)")
    parser.add_argument("--guidance-scale", type=float, help="CFG scale (default: the base's; see the line printed)")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
    parser.add_argument(
        "--batch-size",
        type=int,
        help="images per pipeline call (default: the base's, which fits a 24 GB GPU; the world: all at once)",
    )
    parser.add_argument(
        "--reward", metavar="SPEC", help="scores in the grid's captions (default: the base model's; none: no scores)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--dtype",
        default="bf16",
        choices=["bf16", "fp16", "fp32"],
        help="on GPU; CPU is fp32 (fp16 decodes in fp32 when the VAE asks, force_upcast)",
    )
    parser.add_argument(
        "-o", "--output", required=True, help="grid PNG file; each image goes beside it as NAME_p{prompt}_s{seed}.png"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from texforce.adapters.files import load_adapter, load_text_adapters, require_adapter
    from texforce.bases.loading import prepare_pipeline, resolve_device
    from texforce.bases.rendering import render_images
    from texforce.config import ModelConfig
    from texforce.images import caption, make_grid, save_png, to_pil
    from texforce.observe.runlog import check_writable
    from texforce.prompts import load_prompt_set
    from texforce.rewards import build_reward, check_prompts
    from texforce.run.defaults import choose_base, defaults_for, judge

    output = Path(args.output)
    if output.suffix.lower() != ".png":
        raise TexforceError(f"--output must be a .png file, got {args.output}")
    if args.num_images < 1 or any(v is not None and v < 1 for v in (args.steps, args.batch_size)):
        raise TexforceError("--num-images, --steps and --batch-size must be >= 1")
    prompts = list(args.prompt or [])
    if args.prompts:
        prompts += list(load_prompt_set(args.prompts).train)
    if not prompts:
        raise TexforceError("give --prompt TEXT or --prompts SET|FILE")
    for flag, adapter in (("--text-lora", args.text_lora), ("--unet-lora", args.unet_lora)):
        if adapter is not None:
            require_adapter(adapter, flag)
    base = choose_base(args.model, [args.text_lora, args.unet_lora])
    resolved = defaults_for(base)
    defaults = resolved.config
    steps = args.steps or defaults.sample.num_steps
    guidance = defaults.sample.guidance_scale if args.guidance_scale is None else args.guidance_scale
    batch_size = args.batch_size or resolved.batch_size
    reward_spec = args.reward or judge(defaults)
    if reward_spec != "none":
        try:
            check_prompts(reward_spec, prompts, "--prompt/--prompts")
        except TexforceError as error:
            raise TexforceError(f"{error}; --reward none samples them unscored") from None
    seeds = [args.seed + i for i in range(args.num_images)]
    paths = [output.with_name(f"{output.stem}_p{p}_s{seed}.png") for p in range(len(prompts)) for seed in seeds]
    check_writable(output, "--output")
    device = resolve_device(args.device)
    pipe = prepare_pipeline(ModelConfig(base=base, dtype=args.dtype), device)
    if args.text_lora:
        load_text_adapters(pipe, args.text_lora, base=base)
    if args.unet_lora:
        load_adapter(pipe, args.unet_lora, "unet", base=base)
    reward = build_reward(reward_spec, device) if reward_spec != "none" else None
    pipe.to(device)
    given = {"--steps": args.steps, "--guidance-scale": args.guidance_scale, "--batch-size": args.batch_size}
    print(f"texforce sample: {resolved.describe(steps, guidance, batch_size, given)}", file=sys.stderr)
    shown = [prompt for prompt in prompts for _ in seeds]
    images = render_images(
        pipe,
        shown,
        seeds * len(prompts),
        batch_size,
        steps,
        guidance,
        negative_prompt=args.negative_prompt,
        eta=args.eta,
        max_sequence_length=defaults.model.max_sequence_length,
    )
    scores = reward(images, shown).total.tolist() if reward is not None else [None] * len(shown)
    for picture, path in zip(to_pil(images), paths, strict=True):
        save_png(picture, path)
    captions = [caption(p, [] if s is None else [s]) for p, s in zip(shown, scores, strict=True)]
    save_png(make_grid(images, columns=args.num_images, captions=captions), output)
    print("\n".join(map(str, [output, *paths])))  # the grid, then each image
    return 0
