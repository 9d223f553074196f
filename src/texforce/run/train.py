"""A training run on disk: its folder, config, before/after evaluation, final adapters, and resume.

Run folder:
    config.yaml       the resolved config (a resume must match it)
    metrics.jsonl     one JSON object per epoch (epoch, reward_mean, reward_std, ppo/*, lr/*, time/*)
    eval.json         before/after rewards of training and held-out prompts on fixed seeds, with the change's
                      95% interval and verdict, and the sampler settings they were rendered with
    samples/          epoch_{n:05d}.png grids; eval_before/after_*.png
    checkpoints/      checkpoint_{epoch:05d}/ (see training/checkpoint.py)
    lora/             the final adapters, diffusers + PEFT formats (see adapters/files.py)
    .lock             while a process trains in it: that process's PID and host (see `run_lock`)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import broadcast_object_list
from rich.console import Console

from texforce.config import to_dict
from texforce.errors import TexforceError
from texforce.files import write_folder_atomically, write_text_atomic
from texforce.images import caption, make_grid, save_png
from texforce.observe.runlog import RunLogger, check_writable
from texforce.prompts.styles import get_style, styled
from texforce.run.run_config import RunConfig, load_config, save_config
from texforce.run.trainer import Trainer
from texforce.stats import estimate, verdict
from texforce.training.checkpoint import complete_checkpoints, resume_hint
from texforce.training.distributed import end_processes, process_state


def _config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key in old.keys() | new.keys():
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _config_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key} ({a!r} → {b!r})")
    return sorted(keys)


def prepare_run(
    config_path: str | None, overrides: list[str], resume: str | None
) -> tuple[RunConfig, Path, Path | None]:
    """Resolve config and run folder; for `--resume`, the run's own config and its latest complete checkpoint.

    A new run's folder is made later, by `create_run_dir` once the model has loaded: bad input leaves nothing.
    """
    if resume is None:
        config = load_config(config_path, overrides)
        return config, new_run_dir(config), None
    run_dir = Path(resume)
    if not (run_dir / "config.yaml").is_file():
        raise TexforceError(f"--resume {resume}: not a run folder (no config.yaml)")
    config = load_config(run_dir / "config.yaml")
    if config_path is not None or overrides:
        requested = load_config(config_path or run_dir / "config.yaml", overrides)
        requested.run_name, requested.output_dir = config.run_name, config.output_dir
        changed = _config_diff(to_dict(config), to_dict(requested))
        if changed:
            raise TexforceError(f"--resume {resume}: the run was started with another config: {', '.join(changed)}")
    checkpoints = complete_checkpoints(run_dir)
    return config, run_dir, (checkpoints[-1] if checkpoints else None)


def new_run_dir(config: RunConfig) -> Path:
    """The folder a new run of `config` will write (`output_dir/run_name`, else a timestamp), checked to be free and
    writable; it is made later, once the model has loaded."""
    run_dir = Path(config.output_dir) / (config.run_name or datetime.now().strftime("%Y%m%d-%H%M%S"))
    if run_dir.exists() and any(run_dir.iterdir()):
        raise TexforceError(f"run folder {run_dir} already exists; pass --resume {run_dir} or another run_name")
    check_writable(run_dir, "the run folder")
    return run_dir


def create_run_dir(config: RunConfig, run_dir: Path) -> None:
    """Create a new run's folder and write its resolved config; an unwritable place is a one-line error."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / ".config.yaml.tmp")
        os.replace(run_dir / ".config.yaml.tmp", run_dir / "config.yaml")
    except OSError as error:
        raise TexforceError(f"cannot write to the run folder {run_dir}: {error.strerror or error}") from None


LOCK_FILE = ".lock"


@contextmanager
def run_lock(run_dir: Path, main: bool = True) -> Iterator[None]:
    """Hold `RUN/.lock` while this process trains in `run_dir`: a second process fails in one line instead of
    writing beside the first. The lock is an `flock` on the file, which the kernel drops when its process dies,
    so a lock left by a killed process is stale and simply taken over. Only the main process (`main`) of a
    multi-process run locks; the others never write."""
    import fcntl

    if not main:
        yield
        return
    path = run_dir / LOCK_FILE
    handle = open(path, "a+")  # noqa: SIM115 (held open, and locked, until the run ends)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise TexforceError(
            f"run folder {run_dir} is in use by {owner}, which is training in it; wait for it to end or stop it"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
        handle.close()


@contextmanager
def new_run_folder(config: RunConfig, run_dir: Path, logger: RunLogger) -> Iterator[None]:
    """Create and lock a new run's folder; remove it again if the run stops before its first checkpoint, so that a
    failed start leaves nothing behind (and "start the run again" is the truthful hint)."""
    if not logger.main:
        yield
        return
    create_run_dir(config, run_dir)
    with run_lock(run_dir):
        try:
            yield
        except BaseException:
            if not complete_checkpoints(run_dir):
                if logger.tracker is not None:
                    logger.tracker.close()
                shutil.rmtree(run_dir, ignore_errors=True)
            raise


def train_run(
    config_path: str | None = None, overrides: list[str] = (), resume: str | None = None, quiet: bool = False
) -> Path:
    """`texforce train`: set up, evaluate, train (resumably), evaluate, export. Returns the run folder.

    Under `accelerate launch` every process runs this; each renders its share of the evaluations, only the main
    one writes. Ctrl-C raises a `KeyboardInterrupt` whose message says how to go on (resume, or start again).
    """
    config, run_dir, checkpoint = prepare_run(config_path, list(overrides), resume)
    return _run(config, run_dir, checkpoint, resume is not None, quiet)


def train(config: RunConfig, quiet: bool = False) -> Path:
    """A new run of `config` (from `load_config`), from Python: as `texforce train`; returns the run folder, whose
    `lora/` holds the adapters (`pipe.load_lora_weights(run_dir / "lora")`)."""
    return _run(config, new_run_dir(config), None, False, quiet)


def _run(config: RunConfig, run_dir: Path, checkpoint: Path | None, resume: bool, quiet: bool) -> Path:
    """Set up, then train a new run in `run_dir` or resume it from `checkpoint`, under the run lock."""
    state = process_state(config.model.device, config.distributed.timeout_minutes)
    logger = RunLogger(run_dir, config.train.num_epochs, config.keep_checkpoints, quiet, state.is_main_process)
    with ExitStack() as stack:
        if resume:  # before loading anything: a run folder in use fails at once
            stack.enter_context(run_lock(run_dir, state.is_main_process))
        trainer = Trainer(config, logger)
        trainer.setup()
        state.wait_for_everyone()  # every process has checked the run folder before the main one creates it
        if not resume:
            stack.enter_context(new_run_folder(config, run_dir, logger))
        try:
            _train(trainer, logger, run_dir, checkpoint)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(logger.resume_hint()) from None
    end_processes(state)
    return run_dir


def _train(trainer: Trainer, logger: RunLogger, run_dir: Path, checkpoint: Path | None) -> None:
    """Evaluate before (once per run), train from `checkpoint` (None: from the start), evaluate after, export.

    Every process renders its share of each evaluation; the main process decides whether the run still needs its
    "before" evaluation (it reads `eval.json`) and writes."""
    config, state = trainer.config, trainer.dist
    logger.start_tracking(config)
    if checkpoint is not None:
        trainer.load_checkpoint(checkpoint)
        logger.console.print(f"resumed from {checkpoint} (epoch {trainer.start_epoch})")
    logger.truncate_metrics(trainer.start_epoch)
    eval_path = run_dir / "eval.json"
    results = json.loads(eval_path.read_text()) if state.is_main_process and eval_path.exists() else {}
    if broadcast_object_list(["scores" not in results])[0]:
        before = evaluate(trainer, "before")
        if state.is_main_process:
            results = eval_record(trainer, before, None)
            write_text_atomic(eval_path, json.dumps(results, indent=2))
    state.wait_for_everyone()
    started = time.perf_counter()
    trainer.train()
    with trainer.final_weights():
        after = evaluate(trainer, "after")
        if state.is_main_process:
            results = eval_record(trainer, results["scores"]["before"], after)
            results["train_seconds_this_session"] = round(time.perf_counter() - started, 1)
            export_adapters(trainer, run_dir)
    if state.is_main_process:
        write_text_atomic(eval_path, json.dumps(results, indent=2))
        logger.tracker.close()
        summarise(logger.console, results, config.eval.reward or config.reward, run_dir)
    state.wait_for_everyone()


def export_adapters(trainer: Trainer, run_dir: Path) -> None:
    """The final adapters into `RUN/lora`, via a temporary folder and a rename."""
    final = run_dir / "lora"
    try:
        write_folder_atomically(final, partial(trainer.policy.save_adapters, ui_name=run_dir.name))
    except OSError as error:
        raise TexforceError(
            f"cannot write the final adapters to {final} ({error.strerror or error}); {resume_hint(run_dir)}"
        ) from None


def evaluate(trainer: Trainer, when: str) -> dict[str, Any] | None:
    """Rewards of training and held-out prompts × `eval.num_seeds` fixed seeds (deterministic DDIM), each process
    rendering its share; the main process saves a grid of each and gets per split the scores (seeds × prompts),
    the others None."""
    e, prompts = trainer.config.eval, trainer.prompts
    seeds = [e.seed + k for k in range(e.num_seeds)]
    heldout = list(prompts.eval[: e.num_prompts])
    splits = [("train", list(prompts.train[: e.num_prompts]), None), ("heldout", heldout, None)]
    splits += [(f"heldout@{s}", heldout, styled(heldout, get_style(s))) for s in e.styles if s != "plain"]
    result = {}
    for name, chosen, texts in splits:
        if not chosen:
            continue
        judged = trainer.evaluate(chosen, seeds, texts)
        if judged is None:
            continue
        scores, images = judged
        result[name] = [[round(v, 5) for v in row] for row in scores.tolist()]
        shown = texts or chosen
        grid = make_grid(images, captions=[caption(p, [s]) for p, s in zip(shown, scores[0].tolist(), strict=True)])
        save_png(grid, trainer.log.run_dir / "samples" / f"eval_{when}_{re.sub(r'[^A-Za-z0-9]+', '_', name)}.png")
    return result if trainer.dist.is_main_process else None


def eval_record(trainer: Trainer, before: dict[str, Any], after: dict[str, Any] | None) -> dict[str, Any]:
    """eval.json: the sampler settings, per-image scores, means before/after, and the paired change's 95%
    interval and verdict (each image's after − before: same prompt, same seed)."""
    c = trainer.config
    record: dict[str, Any] = {
        "sampler": {
            "num_steps": c.sample.num_steps,
            "guidance_scale": c.sample.guidance_scale,
            "eta": 0.0,
            "seeds": [c.eval.seed + k for k in range(c.eval.num_seeds)],
        },
        "scores": {"before": before, **({"after": after} if after is not None else {})},
        "before": {name: round(float(torch.tensor(v).mean()), 5) for name, v in before.items()},
    }
    if after is not None:
        record["after"] = {name: round(float(torch.tensor(v).mean()), 5) for name, v in after.items()}
        record["change"] = {}
        for name in after:
            change = estimate((torch.tensor(after[name]) - torch.tensor(before[name])).flatten().tolist())
            record["change"][name] = {
                "mean": round(change.mean, 5),
                "ci95": round(change.ci, 5),
                "n": change.n,
                "verdict": verdict(change),
            }
    return record


SPLIT_NAMES = {"train": "training prompts", "heldout": "held-out prompts"}
VERDICT_SENTENCES = {
    "rose": "it rose",
    "fell": "it fell",
    "no clear change": "no clear change at this sample size",
}


def summarise(console: Console, results: dict[str, Any], reward: str, run_dir: Path) -> None:
    """The end of a run: before → after per split with the 95% interval and a plain verdict, then where to look."""
    for name, change in results.get("change", {}).items():
        before, after = results["before"][name], results["after"][name]
        seeds = len(results["sampler"]["seeds"])
        split, _, style = name.partition("@")
        label = SPLIT_NAMES[split] + (f" written {style}" if style else "")
        console.print(
            f"{label} ({change['n'] // seeds} × {seeds} seeds): {reward} {before:.4f} → {after:.4f}, "
            f"change {change['mean']:+.4f} ± {change['ci95']:.4f} (95% interval): "
            f"{VERDICT_SENTENCES[change['verdict']]}",
            highlight=False,
        )
    console.print(f"run folder {run_dir} · HTML report: texforce report {run_dir}", highlight=False)
