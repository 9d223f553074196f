"""`texforce diagnose snr`: gradients of independent batches at one policy, and their agreement."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_overrides

from texforce.cli.main import main
from texforce.run import diagnose
from texforce.run.run_config import load_config
from texforce.run.trainer import epoch_generator


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"advantage__mode": "group", "advantage__group_size": 4},
        {"train__algorithm": "backprop", "reward": "world_clipscore", "sample__eta": 0.0},
    ],
)
def test_independent_batches_give_distinct_gradients(tiny_model_dir, tmp_path, extra):
    config = load_config(None, tiny_overrides(tiny_model_dir, tmp_path, **extra))
    figures = diagnose.gradient_snr(config, num_batches=3, log=lambda message: None)
    assert len(figures["cosines"]) == 3 and all(-1 <= c < 0.999 for c in figures["cosines"])
    assert figures["samples_per_batch"] == 8 and figures["algorithm"] == config.train.algorithm


def test_the_same_batch_twice_agrees_perfectly(tiny_model_dir, tmp_path, monkeypatch):
    """Same samples, same policy: the gradients coincide, so the measurement itself adds no noise."""
    monkeypatch.setattr(diagnose, "epoch_generator", lambda seed, epoch: epoch_generator(seed, 0))
    config = load_config(None, tiny_overrides(tiny_model_dir, tmp_path, advantage__mode="batch"))
    monkeypatch.setattr(
        "texforce.run.trainer.Trainer.batch_generators",
        lambda self, epoch: [torch.Generator().manual_seed(1)] * 2,
    )
    figures = diagnose.gradient_snr(config, num_batches=2, log=lambda message: None)
    assert figures["cosines"][0] == pytest.approx(1.0, abs=1e-6)


def test_cli_prints_and_writes_the_figures(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "snr.json"
    argv = ["diagnose", "snr", *tiny_overrides(tiny_model_dir, tmp_path), "--batches", "2", "--json", str(out)]
    assert main(argv) == 0
    assert "mean cosine" in capsys.readouterr().out
    assert json.loads(out.read_text())["num_batches"] == 2
    assert main(["diagnose", "snr", "--batches", "1"]) == 2
