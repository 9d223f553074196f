"""Where reward weights live on disk, and the one-line error when they are missing.

Nothing is ever downloaded here. A weight is looked up, in order, under `$TEXFORCE_HOME` (default
`~/.cache/texforce`) and in the Hugging Face cache (as `local_files_only` would). When neither has it,
`TexforceError` names the file, both places and the command that fetches it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from texforce.errors import TexforceError


def texforce_home() -> Path:
    """`$TEXFORCE_HOME`, or `~/.cache/texforce` when unset."""
    return Path(os.environ.get("TEXFORCE_HOME", Path.home() / ".cache" / "texforce")).expanduser()


@dataclass(frozen=True)
class WeightFile:
    """One weight a reward needs: `path` under `$TEXFORCE_HOME`, or `hf_files[0]` of the HF repo `hf_repo`.

    A `path` ending in `/` names a model folder (a `save_pretrained` layout); it is found in the HF cache
    by its first file, `config.json`, and `hf_files` lists what the download command fetches.
    """

    path: str
    hf_repo: str
    hf_files: tuple[str, ...] = ("config.json",)

    @property
    def is_folder(self) -> bool:
        return self.path.endswith("/")

    def download_command(self) -> str:
        files = " ".join(self.hf_files) if not self.is_folder or len(self.hf_files) > 1 else ""
        return f"hf download {self.hf_repo} {files}".rstrip()


def _from_hf_cache(weight: WeightFile) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(weight.hf_repo, weight.hf_files[0])
    if not isinstance(cached, str):  # None (not cached) or a sentinel (cached as missing upstream)
        return None
    return Path(cached).parent if weight.is_folder else Path(cached)


def locate_weight(weight: WeightFile) -> Path:
    """The local path of `weight` (a file, or a model folder); raises a one-line `TexforceError` if absent."""
    local = texforce_home() / weight.path
    if (local / "config.json").is_file() if weight.is_folder else local.is_file():
        return local
    cached = _from_hf_cache(weight)
    if cached is not None:
        return cached
    raise TexforceError(
        f"missing weights {weight.path!r}: put them at {local} or in the Hugging Face cache ({weight.hf_repo}); "
        f"get them with: {weight.download_command()}"
    )
