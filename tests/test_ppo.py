import numpy as np
import pytest
import torch

from texforce.algorithms.ppo import PerPromptStatTracker, batch_advantages, ppo_clipped_loss


def test_stat_tracker_uses_batch_stats_until_min_count():
    tracker = PerPromptStatTracker(buffer_size=4, min_count=3)
    rewards = np.array([1.0, 2.0, 3.0, 10.0])
    advantages = tracker.update(["a", "a", "b", "b"], rewards)
    np.testing.assert_allclose(advantages, (rewards - rewards.mean()) / (rewards.std() + 1e-6))
    advantages = tracker.update(["a", "b"], np.array([3.0, 0.0]))
    # "a" now has 3 values [1, 2, 3] -> own stats; "b" has [3, 10, 0] -> own stats too
    assert advantages[0] == pytest.approx((3.0 - 2.0) / (np.std([1, 2, 3]) + 1e-6))
    assert advantages[1] == pytest.approx((0.0 - np.mean([3, 10, 0])) / (np.std([3, 10, 0]) + 1e-6))


def test_stat_tracker_buffer_is_bounded_and_restorable():
    tracker = PerPromptStatTracker(buffer_size=2, min_count=1)
    tracker.update(["a"] * 3, np.array([1.0, 2.0, 3.0]))
    assert tracker.state_dict() == {"a": [2.0, 3.0]}
    other = PerPromptStatTracker(buffer_size=2, min_count=1)
    other.load_state_dict(tracker.state_dict())
    np.testing.assert_allclose(other.update(["a"], np.array([5.0])), tracker.update(["a"], np.array([5.0])))


def test_batch_advantages_are_standardised():
    advantages = batch_advantages(np.array([1.0, 2.0, 3.0, 4.0]))
    assert advantages.mean() == pytest.approx(0.0) and advantages.std() == pytest.approx(1.0, abs=1e-5)


def test_ppo_loss_on_policy_and_clipping():
    log_probs = torch.tensor([0.0, 0.0], requires_grad=True)
    stats = ppo_clipped_loss(log_probs, torch.zeros(2), torch.tensor([1.0, -1.0]), clip_range=0.1)
    assert stats.ratio.item() == 1.0 and stats.clipfrac.item() == 0.0 and stats.approx_kl.item() == 0.0
    stats.loss.backward()
    torch.testing.assert_close(log_probs.grad, torch.tensor([-0.5, 0.5]))
    # ratio e^0.5 > 1.1 with positive advantage: clipped, no gradient
    log_probs = torch.tensor([0.5], requires_grad=True)
    stats = ppo_clipped_loss(log_probs, torch.zeros(1), torch.tensor([1.0]), clip_range=0.1)
    stats.loss.backward()
    assert stats.loss.item() == pytest.approx(-1.1) and log_probs.grad.item() == 0.0
    assert stats.clipfrac.item() == 1.0


def test_group_advantages_normalise_within_each_prompt_of_the_batch():
    from texforce.algorithms.ppo import group_advantages

    prompts = ["a", "a", "b", "b"]
    advantages = group_advantages(prompts, np.array([1.0, 3.0, 10.0, 10.0]))
    np.testing.assert_allclose(advantages, [-1.0, 1.0, 0.0, 0.0], atol=1e-5)


def test_batch_scaled_groups_keep_a_tight_groups_noise_small():
    from texforce.algorithms.ppo import group_advantages

    prompts = ["a", "a", "b", "b"]
    rewards = np.array([0.0, 1.0, 0.80, 0.81])  # group b: nearly equal scores
    grpo = group_advantages(prompts, rewards)
    np.testing.assert_allclose(grpo, [-1.0, 1.0, -1.0, 1.0], atol=1e-3)  # b's 0.01 noise becomes full size
    scaled = group_advantages(prompts, rewards, scale="batch")
    centred = np.array([-0.5, 0.5, -0.005, 0.005])
    np.testing.assert_allclose(scaled, centred / centred.std(), atol=1e-4)  # b's stays 1/100 of a's


def test_grouped_epochs_draw_each_prompt_group_size_times(tiny_model_dir, tmp_path):
    import torch
    from conftest import tiny_overrides

    from texforce.observe.runlog import RunLogger
    from texforce.run.run_config import load_config
    from texforce.run.trainer import Trainer

    config = load_config(
        None, tiny_overrides(tiny_model_dir, tmp_path, advantage__mode="group", advantage__group_size=4)
    )
    trainer = Trainer(config, RunLogger(tmp_path, 1, 1, quiet=True))
    trainer.setup()
    prompts = trainer.algorithm.epoch_prompts(torch.Generator().manual_seed(0))
    assert len(prompts) == 8 and prompts[:4] == [prompts[0]] * 4 and prompts[4:] == [prompts[4]] * 4
