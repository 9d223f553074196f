"""`world_preference`, the world's learned ImageReward: its judgments, its statistics, a tiny build end to end,
and the shipped model's agreement with the exact reward on held-out prompts it never saw."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from texforce.cli.main import main
from texforce.prompts import load_prompt_set
from texforce.world import PREFERENCE_DIR
from texforce.world.judges.judgments import Judgments, judged_prompts, near_miss, render_judgments
from texforce.world.judges.preference import pairwise_accuracy, ranking_loss, spearman
from texforce.world.scenes import ObjectSpec, SceneSpec, parse_prompt


def test_rendered_groups_start_with_the_true_scene_and_hold_near_misses():
    data = render_judgments(num_groups=24, per_group=6, seed=3)
    scores = data.scores.reshape(24, 6)
    assert (scores[:, 0] == 1.0).all()  # the captioned scene itself is judged perfect
    assert (scores[:, 1:] < 1.0).mean() > 0.5  # most others miss something
    assert len(set(data.prompts[:6])) == 1 and data.source.tolist() == [1] * 144


def test_near_miss_changes_one_thing():
    spec = SceneSpec((ObjectSpec("red", "circle"), ObjectSpec("blue", "square")), "left")
    rng = np.random.default_rng(0)
    for _ in range(50):
        changed = near_miss(spec, rng)
        differences = sum(a != b for a, b in zip(changed.objects, spec.objects, strict=True))
        differences += changed.relation != spec.relation
        assert differences <= 1


def test_training_and_validation_claims_are_disjoint():
    train = {str(parse_prompt(p).canonical()) for p in judged_prompts("train", 200, 0)}
    heldout = {str(parse_prompt(p).canonical()) for p in judged_prompts("heldout", 100, 0)}
    assert train and heldout and not train & heldout


def test_statistics_on_known_cases():
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    # ties share their mean rank: ranks (0.5, 0.5, 2) against (0, 1, 2)
    assert spearman(np.array([1.0, 1.0, 2.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(np.sqrt(3) / 2)
    exact = np.array([0.0, 0.5, 1.0, 0.2, 0.2])
    predicted = np.array([0.1, 0.3, 0.2, 0.9, 0.9])
    group = np.array([0, 0, 0, 1, 1])
    accuracy, pairs = pairwise_accuracy(predicted, exact, group)
    assert pairs == 3 and accuracy == pytest.approx(2 / 3)  # group 1 is a tie in the exact score: no pair


def test_ranking_loss_prefers_the_right_order():
    targets, groups = torch.tensor([0.0, 1.0, 0.0, 1.0]), torch.tensor([0, 0, 1, 1])
    right = ranking_loss(torch.tensor([0.1, 0.9, 0.2, 0.8]), targets, groups)
    wrong = ranking_loss(torch.tensor([0.9, 0.1, 0.8, 0.2]), targets, groups)
    assert right < wrong


def test_tiny_build_end_to_end(tmp_path, capsys):
    out = tmp_path / "preference"
    assert main(["world", "preference", "--tiny", "--out", str(out), "--cache", str(tmp_path / "cache")]) == 0
    record = json.loads((out / "config.json").read_text())
    assert {"spearman", "pairwise_accuracy", "num_pairs"} <= record["validation"].keys()
    assert (out / "model.safetensors").is_file() and Judgments.load(tmp_path / "cache" / "train.npz").images.ndim == 4
    assert f"**{record['validation']['spearman']:.3f}**" in (out / "README.md").read_text()  # the card
    assert main(["world", "preference", "--tiny", "--out", str(out)]) == 2  # refuses to overwrite
    assert "already holds a reward" in capsys.readouterr().err


def test_shipped_reward_is_small_and_validated():
    record = json.loads((PREFERENCE_DIR / "config.json").read_text())
    size = sum(p.stat().st_size for p in PREFERENCE_DIR.iterdir())
    assert size <= 5_000_000
    # floors near the shipped v2 build's held-out figures against `world_score` (0.813, 0.714): a rebuild must not
    # ship anything worse. The target for within-prompt pairwise accuracy is 0.8, not reached yet.
    assert record["validation"]["spearman"] >= 0.8 and record["validation"]["pairwise_accuracy"] >= 0.7
    assert (PREFERENCE_DIR / "README.md").read_text().count(f"{record['validation']['spearman']:.3f}") == 1


def test_shipped_reward_follows_the_exact_judge_on_unseen_prompts():
    """Fresh samples of held-out prompts (not the build's validation images): the two rewards rank them alike."""
    from texforce.rewards import build_reward
    from texforce.world.judges.evaluate import load_world_pipeline, sample_images

    pipeline = load_world_pipeline()
    prompts = list(load_prompt_set("world").eval)[:16]
    images = torch.cat([sample_images(pipeline, prompts, seed, eta=1.0) for seed in (71, 72)])
    both = build_reward("world_preference:1+world_score:0")(images, prompts * 2).components
    assert spearman(both["world_preference"].numpy(), both["world_score"].numpy()) >= 0.6
