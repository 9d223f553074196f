"""Where a training sample's time goes in the offline world's runs, and samples/s end to end, on this machine.

    nice -n 10 python -m benchmarks.world_speed                         # `texforce train` (default) and world_ddpo
    python -m benchmarks.world_speed --configs default --threads 2 --epochs 3
    python -m benchmarks.world_speed --configs default sample.batch_size_per_device=64 train.batch_size_per_device=32
    python -m benchmarks.world_speed --smoke                            # tiny model, seconds: checks the harness

Each config is trained as `texforce train CONFIG [KEY=VALUE …]` trains it (the same Trainer, its epoch loop,
metrics, sample grids and checkpoints, in a temporary folder), for --warmup epochs that are not counted, then
--epochs that are. Per counted epoch: sampling (the DDIM chains, VAE decode excluded), VAE decode, reward, update
(DDPO's PPO epochs, or backprop's whole micro-batch loop) and other (logging, grids, checkpoints); their means per
epoch and per sample, their shares, and samples/s end to end. Model loading and the run's before/after evaluation
(fixed costs per run) are left out. Prints one JSON object per config (and appends them to --json). Compare
settings by running it twice: threads with --threads, batch sizes with key=value overrides.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.timing import append_json_lines
from texforce.experiments.harness import machine
from texforce.observe.runlog import RunLogger
from texforce.run.run_config import load_config
from texforce.run.trainer import Trainer

SMOKE = [  # the tiny random model, reading world prompts: seconds on a CPU
    "model.base=texforce/tiny-random",
    "sample.num_steps=2",
    "sample.batch_size_per_device=4",
    "train.batch_size_per_device=2",
    "advantage.mode=batch",
    "backprop.num_grad_steps=2",  # the default run's backprop keeps the whole chain: at most its 2 steps
]


def accumulate(owner: object, name: str, device: torch.device) -> list[float]:
    """Wrap method `name` of `owner` in place; the returned list receives the seconds of each call."""
    method, seconds = getattr(owner, name), []

    def timed(*args: object, **kwargs: object) -> object:
        start = time.perf_counter()
        result = method(*args, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        return result

    setattr(owner, name, timed)
    return seconds


def measure(config_name: str, overrides: list[str], warmup: int, epochs: int, folder: Path) -> dict:
    """Train `config_name` for `warmup` + `epochs` epochs; the counted epochs' phases and samples/s."""
    run_dir = folder / config_name
    run_dir.mkdir(parents=True)
    config = load_config(config_name, [*overrides, f"train.num_epochs={warmup + epochs}"])
    trainer = Trainer(config, RunLogger(run_dir, config.train.num_epochs, config.keep_checkpoints, quiet=True))
    trainer.setup()
    decode = accumulate(trainer.policy.vae, "decode", trainer.device)
    starts, stats = [], []
    run_epoch: Callable = trainer.algorithm.run_epoch

    def epoch(*args: object) -> object:
        starts.append((time.perf_counter(), len(decode)))
        stats.append(run_epoch(*args))
        return stats[-1]

    trainer.algorithm.run_epoch = epoch
    trainer.train()
    starts.append((time.perf_counter(), len(decode)))
    counted = range(warmup, warmup + epochs)
    phases = {"sampling": 0.0, "decode": 0.0, "reward": 0.0, "update": 0.0, "other": 0.0}
    for index in counted:
        seconds = stats[index].seconds
        (start, first_decode), (end, last_decode) = starts[index], starts[index + 1]
        decoded = sum(decode[first_decode:last_decode])
        phases["decode"] += decoded
        # DDPO decodes while sampling; backprop samples, decodes and scores inside its one "train" phase
        in_sampling = "sample" in seconds
        phases["sampling"] += seconds.get("sample", 0.0) - (decoded if in_sampling else 0.0)
        phases["reward"] += seconds.get("reward", 0.0)
        phases["update"] += seconds["train"] - (0.0 if in_sampling else decoded)
        phases["other"] += end - start - sum(seconds.values())
    samples = config.samples_per_epoch_per_device
    total = sum(phases.values())
    return {
        "config": config_name,
        "overrides": overrides,
        "algorithm": config.train.algorithm,
        "samples_per_epoch": samples,
        "sample_batch": config.sample.batch_size_per_device,
        "train_batch": config.train.batch_size_per_device,
        "num_steps": config.sample.num_steps,
        "trained_timesteps": config.ddpo.num_train_timesteps(config.sample.num_steps),
        "warmup_epochs": warmup,
        "epochs": epochs,
        "samples_per_s": round(samples * epochs / total, 3),
        "seconds_per_epoch": {k: round(v / epochs, 3) for k, v in phases.items()}
        | {"total": round(total / epochs, 3)},
        "ms_per_sample": {k: round(1000 * v / (epochs * samples), 2) for k, v in phases.items()},
        "share": {k: round(v / total, 3) for k, v in phases.items()},
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "device": str(trainer.device),
        "machine": machine(),
    }


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m benchmarks.world_speed`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every config")
    parser.add_argument("--configs", nargs="+", default=["default", "world_ddpo"], help="shipped configs or files")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's, i.e. the cores)")
    parser.add_argument("--warmup", type=int, default=1, help="epochs run first and not counted")
    parser.add_argument("--epochs", type=int, default=2, help="epochs counted")
    parser.add_argument("--smoke", action="store_true", help="tiny model, 2 steps, 1 + 1 epochs: checks the harness")
    parser.add_argument("--json", help="append the results to this JSON-lines file")
    return parser


def main(argv: list[str] | None = None) -> list[dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = [*SMOKE, *args.overrides] if args.smoke else args.overrides
    if args.epochs < 1 or args.warmup < 0:
        parser.error("--epochs must be >= 1 and --warmup >= 0")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs:
            results.append(measure(config, overrides, args.warmup, args.epochs, Path(tmp)))
            print(json.dumps(results[-1]), flush=True)
    append_json_lines(args.json, results)
    return results


if __name__ == "__main__":
    main()
