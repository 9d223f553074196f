"""The project's own code stays ruff-clean (lint and format), checked with the pinned ruff on the Python files git
tracks: a user's untracked scratch script is not the project's."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a checkout")


def ruff(root: Path, *command: str) -> subprocess.CompletedProcess:
    """`ruff COMMAND` on the tracked `.py` files of the git checkout `root` (those still on disk)."""
    listed = subprocess.run(["git", "ls-files", "*.py"], cwd=root, capture_output=True, text=True, check=True)
    files = [name for name in listed.stdout.splitlines() if (root / name).is_file()]
    return subprocess.run([sys.executable, "-m", "ruff", *command, *files], cwd=root, capture_output=True, text=True)


def test_ruff_check():
    result = ruff(ROOT, "check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format():
    result = ruff(ROOT, "format", "--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_untracked_scratch_scripts_are_not_checked(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "tracked.py").write_text("x = 1\n")
    subprocess.run(["git", "add", "tracked.py"], cwd=tmp_path, check=True)
    (tmp_path / "scratch.py").write_text("import os,sys\nx=1\n")  # unused imports, unformatted
    assert ruff(tmp_path, "check").returncode == 0 and ruff(tmp_path, "format", "--check").returncode == 0
    subprocess.run(["git", "add", "scratch.py"], cwd=tmp_path, check=True)
    assert ruff(tmp_path, "check").returncode != 0  # once tracked, it is the project's
