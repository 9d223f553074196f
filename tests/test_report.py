"""`texforce report`: a self-contained HTML page that a real browser renders (headless Chromium if installed)."""

import json
import re
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
import torch
from PIL import Image

from texforce.cli.main import main
from texforce.images import make_grid, save_png
from texforce.observe.report import build_report
from texforce.run.run_config import load_config, save_config

CHART_BLUE = (0x1F, 0x77, 0xB4)


@pytest.fixture
def run_dir(tmp_path):
    """A run folder as training leaves it: config, 5 epochs of metrics, eval.json and fixed-seed grids."""
    run = tmp_path / "run"
    run.mkdir()
    save_config(load_config(None, ["reward=jpeg_compressibility:1+jpeg_incompressibility:0.1"]), run / "config.yaml")
    rows = [
        {"epoch": e, "reward_mean": -4 + 0.1 * e, "reward_std": 0.05, "reward/jpeg_compressibility_mean": -4 + e / 9,
         "reward/jpeg_compressibility_std": 0.04, "ppo/loss": 1e-3 / e, "ppo/approx_kl": 1e-6 * e, "ppo/clipfrac": 0.0,
         "lr/group0": 3e-4, "time/sample_s": 1.5, "time/reward_s": 0.1, "time/train_s": 2.0,
         "faults/dropped_samples": int(e == 3), "faults/skipped_steps": 0}
        for e in range(1, 6)
    ]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "eval.json").write_text(json.dumps({"before": {"train": -4.0}, "after": {"train": -3.5}}))
    generator = torch.Generator().manual_seed(0)
    for when in ("before", "after"):
        save_png(make_grid(torch.rand(4, 3, 16, 16, generator=generator)), run / "samples" / f"eval_{when}_train.png")
    return run


def test_report_is_self_contained(run_dir, capsys):
    assert main(["report", str(run_dir)]) == 0
    page = (run_dir / "report.html").read_text()
    assert capsys.readouterr().out.strip() == str(run_dir / "report.html")
    assert page.count("<svg") >= 6 and "<polygon" in page  # curves, the ± std band, phase bars
    assert page.count("data:image/png;base64,") == 2 and "jpeg_compressibility" in page
    assert "dropped samples 1" in page and "+0.5000" in page  # fault count; eval table
    assert "http://" not in page and "https://" not in page and "<script" not in page


@pytest.fixture
def backprop_run(tmp_path):
    """The embedded default's run folder (backprop, a trained judge and a logged-only one), as training leaves it."""
    run = tmp_path / "backprop"
    run.mkdir()
    config = load_config("default")
    save_config(config, run / "config.yaml")
    rows = [
        {"epoch": e, "reward_mean": 0.2 + 0.1 * e, "reward_std": 0.05, "reward/world_preference_mean": 0.2 + 0.1 * e,
         "reward/world_score_mean": 0.1 * e, "ppo/grad_norm": 0.5, "ppo/num_grad_steps": 20.0,
         "ppo/loss": -0.2 - 0.1 * e, "lr/group0": 1e-3, "time/train_s": 2.0}
        for e in range(1, 4)
    ]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    change = {"mean": 0.125, "ci95": 0.05, "n": 256, "verdict": "rose"}
    sampler = {"num_steps": 20, "guidance_scale": 5.0, "eta": 0.0, "seeds": [1234, 1235, 1236, 1237]}
    record = {
        "sampler": sampler,
        "before": {"heldout": 0.25},
        "after": {"heldout": 0.375},
        "change": {"heldout": change},
    }
    (run / "eval.json").write_text(json.dumps(record))
    return run


def test_report_of_a_backprop_run_names_what_it_optimises(backprop_run):
    """Was: its loss chart titled "PPO loss", the header "reward world_preference:1.0+world_score:0.0"."""
    page = build_report(backprop_run)
    titles = re.findall(r'class="t">([^<]*)</text>', page)
    assert not [t for t in titles if "PPO" in t] and "PPO" not in page.split("<h2>Config")[0]
    assert "loss: −reward, backpropagated through the sampler by epoch" in titles
    assert "training reward (world_preference:1.0) by epoch" in titles
    assert "logged only (weight 0): world_score by epoch" in titles
    assert "backprop · reward world_preference:1.0 · logged only: world_score ·" in page


def test_report_evaluation_table_carries_the_interval_and_verdict(backprop_run):
    page = build_report(backprop_run)
    table = page.split("Fixed-seed evaluation")[1].split("</table>")[0]
    cells = re.findall(r"<td>([^<]*)</td>", table)
    assert cells == [
        "held-out prompts",
        "0.25",
        "0.375",
        "+0.1250",
        "+0.1250 ± 0.0500 [+0.0750, +0.1750]",
        "256",
        "rose",
    ]
    assert "20 steps, guidance 5, 4 seeds" in table


def test_report_of_a_run_without_epochs(tmp_path):
    run = tmp_path / "empty"
    run.mkdir()
    save_config(load_config(None, []), run / "config.yaml")
    assert "no epoch finished yet" in build_report(run)


def test_report_of_a_folder_that_is_no_run(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "is not a run folder" in capsys.readouterr().err


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="headless Chromium not installed (apt-get install chromium)"
)
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    page = run_dir / "report.html"
    assert main(["report", str(run_dir), "-o", str(page)]) == 0
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
    with tempfile.TemporaryDirectory() as profile:
        command = ["chromium", *flags, f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1200,1600"]
        subprocess.run([*command, page.as_uri()], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    blue = np.all(np.abs(pixels.astype(int) - CHART_BLUE) <= 8, axis=1).sum()
    assert blue > 500, "the reward curves were not drawn"
    assert len(np.unique(pixels[::7], axis=0)) > 200, "the sample grids were not drawn"
