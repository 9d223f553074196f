"""Checkpoints are complete or absent: a crash mid-write never leaves one that looks valid."""

import re

import pytest
import torch

from texforce.errors import TexforceError
from texforce.training.checkpoint import (
    complete_checkpoints,
    load_checkpoint_state,
    rng_state,
    set_rng_state,
    write_checkpoint,
)


def write_adapter(folder):
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(b"x" * 10)


def test_write_and_prune(tmp_path):
    for epoch in (1, 2, 3):
        write_checkpoint(tmp_path, epoch, {"epoch": epoch, "t": torch.ones(2)}, write_adapter, keep=2)
    checkpoints = complete_checkpoints(tmp_path)
    assert [p.name for p in checkpoints] == ["checkpoint_00002", "checkpoint_00003"]
    assert load_checkpoint_state(checkpoints[-1])["epoch"] == 3


def test_crash_while_writing_leaves_previous_intact(tmp_path):
    write_checkpoint(tmp_path, 1, {"epoch": 1}, write_adapter, keep=3)

    def crash(folder):
        folder.mkdir(parents=True)
        (folder / "half").write_bytes(b"x")
        raise KeyboardInterrupt  # as a kill would, mid-write

    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(tmp_path, 2, {"epoch": 2}, crash, keep=3)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint_00001"]


def disk_full(folder):
    raise OSError(28, "No space left on device")


def test_unwritable_folder_is_a_clear_error(tmp_path):
    write_checkpoint(tmp_path, 1, {"epoch": 1}, write_adapter, keep=3)
    resume = re.escape(f"texforce train --resume {tmp_path}")
    message = rf"No space left on device\); the last checkpoint is intact: {resume}$"
    with pytest.raises(TexforceError, match=message):
        write_checkpoint(tmp_path, 2, {"epoch": 2}, disk_full, keep=3)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["checkpoint_00001"]
    assert not (tmp_path / "checkpoints" / "checkpoint_00002.tmp").exists()


def test_disk_full_before_the_first_checkpoint_claims_no_previous_one(tmp_path):
    with pytest.raises(
        TexforceError, match=r"No space left on device\); no checkpoint was written yet: start the run"
    ):
        write_checkpoint(tmp_path, 1, {"epoch": 1}, disk_full, keep=3)
    assert not complete_checkpoints(tmp_path)


class FakeGPUs:
    """torch.cuda's generator functions on `count` simulated GPUs (a state per GPU, as CUDA's are), for resuming a
    checkpoint where a different number of GPUs is visible."""

    def __init__(self, monkeypatch, count):
        self.states = [torch.full((16,), i, dtype=torch.uint8) for i in range(count)]
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": self.states[self.index(device)].clone())
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states])
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set_state)

    @staticmethod
    def index(device):
        return (
            0 if device in ("cuda", None) else torch.device(device).index or 0 if isinstance(device, str) else device
        )

    def set_state(self, state, device="cuda"):
        self.states[self.index(device)] = state.clone()  # IndexError past the visible GPUs, as torch.cuda's


def test_resume_with_fewer_gpus_visible(tmp_path, monkeypatch):
    """A checkpoint written where 8 GPUs were visible resumes where 1 is: only the current GPU's state is stored,
    and an older checkpoint's list of 8 states restores the current GPU's entry."""
    written = FakeGPUs(monkeypatch, 8)
    written.states[0] = torch.full((16,), 42, dtype=torch.uint8)  # the state the run had reached on its GPU
    write_checkpoint(tmp_path, 1, {"rng": rng_state()}, write_adapter, keep=2)
    old_format = {**rng_state(), "cuda": torch.cuda.get_rng_state_all()}  # before: get_rng_state_all()
    state = load_checkpoint_state(complete_checkpoints(tmp_path)[-1])["rng"]
    assert isinstance(state["cuda"], torch.Tensor) and state["cuda"].tolist() == [42] * 16

    for saved in (state, old_format):
        visible = FakeGPUs(monkeypatch, 1)
        set_rng_state(saved)
        assert visible.states[0].tolist() == [42] * 16
