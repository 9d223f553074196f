"""Checkpoints are complete or absent: a crash mid-write never leaves one that looks valid."""

import re

import pytest
import torch

from texforce.errors import TexforceError
from texforce.training.checkpoint import complete_checkpoints, load_checkpoint_state, write_checkpoint


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
