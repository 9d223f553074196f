"""Checkpoints that are either complete or absent: written to a temporary folder, then renamed.

A checkpoint folder `checkpoints/checkpoint_{epoch:05d}` holds the adapters (both formats, `lora/`),
`trainer_state.pt` (optimizer, LR schedule, stat tracker, RNG states, counters) and, written last,
`COMPLETE`. Only folders with `COMPLETE` are ever resumed from; a crash mid-write leaves a `.tmp`
folder that is ignored and cleaned up by the next save.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from texforce.errors import TexforceError
from texforce.files import make_safetensors_readable

COMPLETE = "COMPLETE"
STATE_FILE = "trainer_state.pt"
_NAME = re.compile(r"^checkpoint_(\d{5})$")


def kill_point(phase: str, epoch: int) -> None:
    """Fault-injection hook for tests: `TEXFORCE_TEST_KILL_AT=phase:epoch` SIGKILLs the process right here.

    Phases: sample, reward, update (after the epoch's first optimizer step), checkpoint (the epoch's metrics
    are logged and the checkpoint's adapters written, `COMPLETE` not yet). Unset, it does nothing.
    """
    if os.environ.get("TEXFORCE_TEST_KILL_AT") == f"{phase}:{epoch}":
        os.kill(os.getpid(), signal.SIGKILL)


def checkpoint_dir(run_dir: Path, epoch: int) -> Path:
    return run_dir / "checkpoints" / f"checkpoint_{epoch:05d}"


def rng_state() -> dict[str, Any]:
    """Every global random state a training step may touch: Python's, NumPy's, torch's CPU generator, and the
    current GPU's generator (not every visible GPU's, so that a run resumes where fewer GPUs are visible).

    texforce itself draws all its noise from explicit CPU generators, so the GPU state is kept only for code
    beside it (a reward model, a user's callback) that draws from the global CUDA generator."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore `rng_state()`'s states. A checkpoint written before this format holds one CUDA state per GPU
    visible then: the current GPU's is restored when there is one of that index, none otherwise."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is None or not torch.cuda.is_available():
        return
    if isinstance(cuda, list | tuple):  # the older format: torch.cuda.get_rng_state_all()
        index = torch.cuda.current_device()
        if index >= len(cuda):
            return
        cuda = cuda[index]
    torch.cuda.set_rng_state(cuda)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def write_checkpoint(
    run_dir: Path, epoch: int, state: dict[str, Any], write_adapters: Callable[[Path], None], keep: int
) -> Path:
    """Atomically write checkpoint `epoch`; keep only the newest `keep` complete checkpoints."""
    final = checkpoint_dir(run_dir, epoch)
    tmp = final.with_name(final.name + ".tmp")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write_adapters(tmp / "lora")
        make_safetensors_readable(tmp)
        kill_point("checkpoint", epoch)
        torch.save(state, tmp / STATE_FILE)
        (tmp / COMPLETE).write_text(json.dumps({"epoch": epoch}))
        _fsync_tree(tmp)
        if final.exists():
            old = final.with_name(final.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old)
        else:
            tmp.rename(final)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = error.strerror or error
        raise TexforceError(f"cannot write checkpoint {final} ({reason}); {resume_hint(run_dir)}") from None
    for stale in complete_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    return final


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME.match(p.name) and (p / COMPLETE).is_file()]
    return sorted(found)


def checkpoint_epoch(checkpoint: Path) -> int:
    """The epoch a checkpoint folder (`checkpoint_{epoch:05d}`) was written after."""
    match = _NAME.match(checkpoint.name)
    if match is None:
        raise ValueError(f"{checkpoint} is not a checkpoint folder")
    return int(match.group(1))


def resume_hint(run_dir: Path) -> str:
    """What is true of a run folder's checkpoints, for the messages of a run that stops: resume, or start again."""
    if complete_checkpoints(run_dir):
        return f"the last checkpoint is intact: texforce train --resume {run_dir}"
    return "no checkpoint was written yet: start the run again"


def load_checkpoint_state(checkpoint: Path) -> dict[str, Any]:
    return torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)
