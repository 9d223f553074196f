"""`texforce score`: score image files with any reward spec; prints a table, optionally writes a CSV.

A reward built for one image size (the world rewards: the world model's 64×64) gets square images resized to it,
with a warning, and refuses others (a captioned grid, a wrong aspect), so that no score is silently meaningless.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from texforce.errors import TexforceError
from texforce.reward_fn import WeightedReward


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score images with a reward (table or CSV)",
        description="Score images with a reward spec, e.g. 'pickscore' or 'imagereward:1+aesthetic:0.1'.",
        epilog="examples:\n  texforce score circles_p0_s0.png --prompt 'two red circles'   # the world's reward\n"
        "  texforce score out/*.png --reward pickscore --prompt 'a photo of a hand'\n"
        "  texforce score a.png b.png --reward 'imagereward:1+aesthetic:0.1' --prompts prompts.txt --csv scores.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    parser.add_argument(
        "--reward", help="reward spec: name[:weight]+name[:weight]… (default: the offline world's judge)"
    )
    prompts = parser.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", help="one prompt for every image")
    prompts.add_argument("--prompts", type=Path, help="a text file with one prompt per image, in order")
    parser.add_argument("--csv", type=Path, help="also write the scores to this CSV file")
    parser.add_argument("--batch-size", type=int, default=16, help="images per reward call (default 16)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.set_defaults(func=run)


def load_image(path: Path) -> torch.Tensor:
    """An image file as a float tensor (3, H, W) in [0, 1]."""
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    except FileNotFoundError:
        raise TexforceError(f"no such image: {path}") from None
    except (UnidentifiedImageError, OSError) as error:
        raise TexforceError(f"cannot read image {path}: {error}") from None
    return torch.from_numpy(pixels).permute(2, 0, 1)


def read_prompts(args: argparse.Namespace) -> list[str]:
    if args.prompt is not None:
        return [args.prompt] * len(args.images)
    try:
        lines = [line.strip() for line in args.prompts.read_text().splitlines() if line.strip()]
    except OSError as error:
        raise TexforceError(f"cannot read prompts file {args.prompts}: {error.strerror}") from None
    if len(lines) != len(args.images):
        raise TexforceError(f"{args.prompts} has {len(lines)} prompts for {len(args.images)} images; give one each")
    return lines


def fit_images(images: list[torch.Tensor], paths: list[Path], size: int | None, spec: str) -> list[torch.Tensor]:
    """Images as the reward was built for them: `size`×`size` (None: any). A square image of another size is
    resized, with one warning line; any other shape (a captioned grid, a wrong aspect) is refused."""
    if size is None:
        return images
    for image, path in zip(images, paths, strict=True):
        if image.shape[-1] != image.shape[-2]:
            raise TexforceError(
                f"{path} is {image.shape[-1]}×{image.shape[-2]}, not square: {spec} judges single {size}×{size} "
                "images (a grid? score the images it was made of)"
            )
    resized = [(image, path) for image, path in zip(images, paths, strict=True) if image.shape[-1] != size]
    if resized:
        image, path = resized[0]
        print(
            f"texforce score: warning: resized {len(resized)} of {len(images)} images to {size}×{size}, which {spec} "
            f"judges (e.g. {path}, {image.shape[-1]}×{image.shape[-1]}); a grid of samples would score as one picture",
            file=sys.stderr,
        )
    return [
        F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True)[0]
        if image.shape[-1] != size
        else image
        for image in images
    ]


def score_images(
    reward: WeightedReward, images: list[torch.Tensor], prompts: list[str], batch_size: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Score images of any sizes: same-size images are stacked into batches of at most `batch_size`."""
    by_size: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for index, image in enumerate(images):
        by_size[tuple(image.shape)].append(index)
    total = torch.zeros(len(images))
    components = {name: torch.zeros(len(images)) for name in reward.names}
    for indices in by_size.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            output = reward(torch.stack([images[i] for i in chunk]), [prompts[i] for i in chunk])
            total[chunk] = output.total
            for name, values in output.components.items():
                components[name][chunk] = values
    return total, components


def run(args: argparse.Namespace) -> int:
    from texforce.files import write_text_atomic
    from texforce.observe.runlog import check_writable
    from texforce.rewards import build_reward, check_prompts, image_size
    from texforce.run.defaults import judge
    from texforce.run.run_config import load_config

    if args.batch_size < 1:
        raise TexforceError(f"--batch-size must be at least 1, got {args.batch_size}")
    spec = args.reward or judge(load_config("default"))
    prompts = read_prompts(args)
    check_prompts(spec, prompts, "--prompt" if args.prompt is not None else str(args.prompts))
    if args.csv:
        check_writable(args.csv, "--csv")
    images = fit_images([load_image(path) for path in args.images], args.images, image_size(spec), spec)
    reward = build_reward(spec, torch.device(args.device))  # in fp32, as every command scores (REWARD_DTYPE)
    total, components = score_images(reward, images, prompts, args.batch_size)

    names = list(components)
    show_total = len(names) > 1  # with one reward the total is that reward
    columns = ["image", *(["total"] if show_total else []), *names]
    rows = [
        [str(path), *([f"{total[i]:.4f}"] if show_total else []), *(f"{components[n][i]:.4f}" for n in names)]
        for i, path in enumerate(args.images)
    ]
    widths = [max(len(cell) for cell in column) for column in zip(columns, *rows, strict=True)]
    for row in [columns, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    if args.csv:
        table = io.StringIO(newline="")
        writer = csv.writer(table)
        writer.writerow([*columns, "prompt"])
        writer.writerows([*row, prompt] for row, prompt in zip(rows, prompts, strict=True))
        write_text_atomic(args.csv, table.getvalue())
        print(f"wrote {args.csv}")
    return 0
