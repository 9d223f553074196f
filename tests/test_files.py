"""Safetensors files texforce writes are readable as any other new file is (safetensors 0.8 writes them 0600)."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from texforce.files import save_safetensors, write_folder_atomically
from texforce.training.checkpoint import write_checkpoint


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_saved_safetensors_get_the_umask_mode(tmp_path, umask_022):
    save_safetensors({"a": torch.zeros(2)}, tmp_path / "x.safetensors", metadata={"format": "pt"})
    assert mode(tmp_path / "x.safetensors") == 0o644


def test_a_folder_written_atomically_leaves_its_safetensors_readable(tmp_path, umask_022):
    def write(folder):  # as diffusers' and peft's savers do: safetensors' own writer
        (folder / "text_encoder").mkdir(parents=True)
        save_file({"a": torch.zeros(2)}, str(folder / "text_encoder" / "adapter_model.safetensors"))
        save_file({"a": torch.zeros(2)}, str(folder / "pytorch_lora_weights.safetensors"))

    write_folder_atomically(tmp_path / "lora", write)
    files = sorted((tmp_path / "lora").rglob("*.safetensors"))
    assert len(files) == 2 and {mode(f) for f in files} == {0o644}


def test_a_checkpoint_leaves_its_adapters_readable(tmp_path, umask_022):
    def write_adapters(folder):
        folder.mkdir(parents=True)
        save_file({"a": torch.zeros(2)}, str(folder / "pytorch_lora_weights.safetensors"))

    final = write_checkpoint(tmp_path, 1, {"epoch": 1}, write_adapters, keep=1)
    assert mode(final / "lora" / "pytorch_lora_weights.safetensors") == 0o644
