"""Files that are complete or absent, never half-written: a text file or a whole folder written beside its target,
then renamed over it (a rename within one filesystem is atomic). Safetensors files get the mode any other new file
gets: safetensors 0.8 writes them 0600 (safetensors#782), which a UI or server running as another user cannot
read."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def new_file_mode() -> int:
    """The mode `open()` gives a new file: 0o666 less the process umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """`safetensors.torch.save_file`, leaving the file readable as any other new file is."""
    from safetensors.torch import save_file

    save_file(dict(tensors), str(path), metadata=metadata)
    os.chmod(path, new_file_mode())


def make_safetensors_readable(folder: Path) -> None:
    """Every `.safetensors` under `folder` given the mode of a new file: for those that diffusers', peft's and
    transformers' savers write through safetensors' own writer."""
    mode = new_file_mode()
    for weights in folder.rglob("*.safetensors"):
        os.chmod(weights, mode)


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` via a temporary file and a rename: the file is complete or absent, never half-written."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_folder_atomically(folder: Path, write: Callable[[Path], None]) -> None:
    """`write` into a temporary sibling folder, then rename it to `folder`: complete or absent, never half."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    make_safetensors_readable(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
