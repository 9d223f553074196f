"""`texforce world`: pre-train the offline world model and measure it."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from texforce.errors import TexforceError

EPILOG = """examples:
  texforce world pretrain --out src/texforce/world/assets --seed 0     # the shipped model, ~83 min on 2 cores
  texforce world pretrain --out /tmp/world --tiny                        # a seconds-long smoke run
  texforce world pretrain-flow --out src/texforce/world/assets/world_flow  # texforce/world-flow (resumes)
  texforce world eval                                                    # the numbers of the model card
  texforce world eval --model /tmp/world/model --num-prompts 8 --num-seeds 1
  texforce world preference --out src/texforce/world/assets/preference --cache runs/preference  # the learned reward
  texforce world preference --out /tmp/preference --tiny               # a seconds-long smoke run
  texforce world ceiling -o docs/world               # headroom: prompt engineering, best-of-16, oracle embeddings
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "world",
        help="pre-train or evaluate the offline world model",
        description="The offline world: a tiny Stable Diffusion trained on procedural scenes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = parser.add_subparsers(dest="world_command", required=True, metavar="VERB")

    pretrain = verbs.add_parser("pretrain", help="train CLIP, VAE and U-Net; write model/ and clip_image/")
    pretrain.add_argument("--out", type=Path, default=Path("runs/world"), help="folder for model/ and clip_image/")
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--tiny", action="store_true", help="tiny sizes and a few steps (smoke test)")
    pretrain.add_argument("--num-scenes", type=int, help="size of the pre-rendered scene pool")
    pretrain.add_argument("--clip-steps", type=int)
    pretrain.add_argument("--vae-steps", type=int)
    pretrain.add_argument("--unet-steps", type=int)
    pretrain.add_argument(
        "--reuse-clip",
        type=Path,
        metavar="DIR",
        help="skip stage 1 and use the CLIP of an earlier run (its --out folder, with model/ and clip_image/)",
    )
    pretrain.add_argument(
        "--reuse-vae", type=Path, metavar="DIR", help="skip stage 2 and use the VAE of an earlier run (its --out)"
    )
    pretrain.add_argument(
        "--init-unet", type=Path, metavar="DIR", help="warm-start the U-Net from an earlier run's (needs its VAE)"
    )
    pretrain.add_argument(
        "--warm-start",
        type=Path,
        metavar="DIR",
        help="start every stage from an earlier run's parts (its --out), fine-tuning them on this run's data",
    )
    pretrain.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    pretrain.set_defaults(func=run)

    flow = verbs.add_parser(
        "pretrain-flow", help="train texforce/world-flow's transformer by rectified flow on the world's CLIP and VAE"
    )
    flow.add_argument("--out", type=Path, default=Path("runs/world_flow"), help="folder for transformer/")
    flow.add_argument("--seed", type=int, default=0)
    flow.add_argument("--steps", type=int, help="training steps (default: the shipped model's)")
    flow.add_argument("--stop-after", type=int, help="end this call after that many steps in all (resume later)")
    flow.add_argument("--tiny", action="store_true", help="a tiny transformer, a few steps (smoke test)")
    flow.set_defaults(func=run)

    evaluate = verbs.add_parser(
        "eval", help="validate the exact judges; measure alignment, quality and score per prompt family"
    )
    evaluate.add_argument("--model", type=Path, help="pipeline folder (default: the shipped model)")
    evaluate.add_argument("--num-prompts", type=int, default=64)
    evaluate.add_argument("--num-seeds", type=int, default=4)
    evaluate.add_argument("--num-inference-steps", type=int, default=20)
    evaluate.add_argument("--guidance-scale", type=float, default=5.0)
    evaluate.add_argument("--eta", type=float, default=1.0)
    evaluate.add_argument("--output", type=Path, help="write the results as JSON here")
    evaluate.add_argument("--grid", type=Path, help="write a PNG of samples, one row per family, here")
    evaluate.set_defaults(func=run)

    preference = verbs.add_parser(
        "preference", help="build world_preference: judge generated images exactly, train, validate on held-out"
    )
    preference.add_argument("--out", type=Path, default=Path("runs/preference"), help="folder for the reward")
    preference.add_argument("--cache", type=Path, help="keep (and reuse) the judged images here (npz)")
    preference.add_argument("--model", type=Path, help="world pipeline folder (default: the shipped model)")
    preference.add_argument("--seed", type=int, default=0)
    preference.add_argument("--steps", type=int, help="training steps")
    preference.add_argument("--tiny", action="store_true", help="a few images and steps (smoke test)")
    preference.add_argument("--overwrite", action="store_true", help="replace an existing reward folder")
    preference.set_defaults(func=run)

    ceiling = verbs.add_parser(
        "ceiling", help="headroom of held-out prompts: prompt engineering, best-of-N, oracle embeddings"
    )
    ceiling.add_argument("-o", "--output", type=Path, default=Path("docs/world"), help="folder for ceiling.md/json")
    ceiling.add_argument("--model", type=Path, help="world pipeline folder (default: the shipped model)")
    ceiling.add_argument("--preference", type=Path, help="world_preference folder (default: the shipped one)")
    ceiling.add_argument("--prompts-per-family", type=int, default=16, help="held-out prompts of each family")
    ceiling.add_argument("--selection-prompts", type=int, default=24, help="training prompts choosing the variant")
    ceiling.add_argument("--best-of", type=int, default=16)
    ceiling.add_argument("--oracle-steps", type=int, default=30)
    ceiling.add_argument("--eval-seeds", type=int, default=4)
    ceiling.set_defaults(func=run)


def _print(message: str) -> None:
    print(message, flush=True)


def _pretrain(args: argparse.Namespace) -> int:
    from texforce.world.models.pretrain import PretrainConfig, Reused, pretrain, tiny_config

    cfg = tiny_config(args.seed) if args.tiny else PretrainConfig(seed=args.seed)
    overrides = {
        "num_scenes": args.num_scenes,
        "clip_steps": args.clip_steps,
        "vae_steps": args.vae_steps,
        "unet_steps": args.unet_steps,
    }
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    try:
        cfg.validate()
    except ValueError as error:
        raise TexforceError(str(error)) from None
    model_dir = args.out / "model"
    if model_dir.exists() and any(model_dir.iterdir()) and not args.overwrite:
        raise TexforceError(f"{model_dir} is not empty; pass --overwrite or choose another --out")
    reused = Reused()
    if args.reuse_clip is not None:
        from texforce.world.clip import load_world_clip

        reused.clip = load_world_clip(args.reuse_clip / "model", args.reuse_clip / "clip_image")
    if args.warm_start is not None:
        from texforce.world.clip import load_world_clip

        reused.init_clip = load_world_clip(args.warm_start / "model", args.warm_start / "clip_image")
        reused.init_vae = _load_component(args.warm_start / "model", "vae")
        reused.unet = _load_component(args.warm_start / "model", "unet")
    for name, folder, component in (("vae", args.reuse_vae, "vae"), ("unet", args.init_unet, "unet")):
        if folder is not None:
            setattr(reused, name, _load_component(folder / "model", component))
    pretrain(cfg, model_dir, args.out / "clip_image", log=_print, reused=reused)
    return 0


def _pretrain_flow(args: argparse.Namespace) -> int:
    from texforce.world.models.flow import PROGRESS_FILE, FlowPretrainConfig, pretrain_flow, tiny_flow_config

    cfg = tiny_flow_config(args.seed) if args.tiny else FlowPretrainConfig(seed=args.seed)
    if args.steps is not None:
        cfg = replace(cfg, steps=args.steps)
    done = (args.out / "transformer").is_dir() and not (args.out / PROGRESS_FILE).is_file()
    if done:
        raise TexforceError(f"{args.out} holds a finished transformer; choose another --out or delete it")
    pretrain_flow(cfg, args.out, log=_print, stop_after=args.stop_after)
    return 0


def _load_component(model_dir: Path, component: str):
    """The VAE or U-Net of an earlier run's pipeline folder, frozen, fp32."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    if not (model_dir / component).is_dir():
        raise TexforceError(f"{model_dir / component} is missing; pass the --out folder of an earlier pretrain")
    cls = AutoencoderKL if component == "vae" else UNet2DConditionModel
    return cls.from_pretrained(model_dir / component).eval().requires_grad_(False)


def _evaluate(args: argparse.Namespace) -> int:
    from texforce.world.judges.evaluate import (
        evaluate_families,
        load_world_pipeline,
        save_grid,
        validate_quality,
        validate_reward,
    )

    start = time.perf_counter()
    validation = validate_reward()
    truth, swapped = validation["ground_truth"], validation["swapped"]
    print(f"world_alignment on ground truth {truth:.3f}, captions swapped {swapped:.3f}")
    quality = validate_quality()
    for defects in range(4):
        means = [r["quality"] for r in quality.values() if r["defects"] == defects]
        print(f"world_quality on ground truth with {defects} defect(s): {min(means):.3f} … {max(means):.3f}")
    pipeline = load_world_pipeline(args.model)
    sampling = {k: getattr(args, k) for k in ("num_inference_steps", "guidance_scale", "eta")}
    families = evaluate_families(pipeline, num_prompts=args.num_prompts, num_seeds=args.num_seeds, **sampling)
    for family, judges in families.items():
        shown = "  ".join(f"{k} {v['mean']:.3f} ± {v['sem']:.3f}" for k, v in judges.items())
        print(f"{family:12s} {shown}  ({judges['world_score']['num_images']} images)")
    elapsed = time.perf_counter() - start
    print(f"done in {elapsed:.0f}s")
    if args.grid:
        save_grid(pipeline, args.grid, **sampling)
    if args.output:
        record = {
            "reward_validation": validation,
            "quality_validation": quality,
            "families": families,
            "sampling": sampling,
            "seconds": elapsed,
        }
        args.output.write_text(json.dumps(record, indent=2) + "\n")
    return 0


def _preference(args: argparse.Namespace) -> int:
    from texforce.world.judges.preference import PreferenceConfig, build_preference, tiny_preference_config

    cfg = tiny_preference_config(args.seed) if args.tiny else PreferenceConfig(seed=args.seed)
    cfg = replace(cfg, **({"steps": args.steps} if args.steps is not None else {}))
    cfg.validate()
    if (args.out / "model.safetensors").exists() and not args.overwrite:
        raise TexforceError(f"{args.out} already holds a reward; pass --overwrite or choose another --out")
    build_preference(cfg, args.out, args.model, args.cache, log=_print)
    return 0


def _ceiling(args: argparse.Namespace) -> int:
    from texforce.world.headroom.ceiling import CeilingConfig, measure_ceiling
    from texforce.world.headroom.page import write_ceiling_page

    counts = (args.prompts_per_family, args.selection_prompts, args.best_of, args.oracle_steps, args.eval_seeds)
    if min(counts) < 1:
        raise TexforceError(
            "--prompts-per-family, --selection-prompts, --best-of, --oracle-steps and --eval-seeds must be >= 1"
        )
    cfg = CeilingConfig(
        prompts_per_family=args.prompts_per_family,
        selection_prompts=args.selection_prompts,
        best_of=args.best_of,
        oracle_steps=args.oracle_steps,
        num_eval_seeds=args.eval_seeds,
    )
    record = measure_ceiling(cfg, args.model, args.preference, log=_print)
    print(write_ceiling_page(record, args.output))
    return 0


def run(args: argparse.Namespace) -> int:
    verbs = {
        "pretrain": _pretrain,
        "pretrain-flow": _pretrain_flow,
        "eval": _evaluate,
        "preference": _preference,
        "ceiling": _ceiling,
    }
    return verbs[args.world_command](args)
