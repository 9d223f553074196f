"""Files that are complete or absent, never half-written: a text file or a whole folder written beside its target,
then renamed over it (a rename within one filesystem is atomic)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


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
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
