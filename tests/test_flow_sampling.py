"""The flow-matching SDE step (Flow-GRPO's) against its closed form, the Euler step at noise level 0, and the chain."""

import math

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from texforce.errors import TexforceError
from texforce.sampling import (
    FluxScheduler,
    check_schedule,
    flow_step,
    sample_latents,
    set_timesteps,
    step_gaussian,
    step_with_logprob,
)


def _scheduler(num_steps: int = 10, shift: float = 3.0) -> FlowMatchEulerDiscreteScheduler:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    set_timesteps(scheduler, num_steps, torch.zeros(1, 4, 8, 8))
    return scheduler


@pytest.mark.parametrize("index", [0, 3, 9])
def test_flow_step_matches_closed_form_gaussian(index):
    scheduler, level = _scheduler(), 0.7
    generator = torch.Generator().manual_seed(index)
    x, v = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    sigmas = scheduler.sigmas.double()
    sigma, nxt = sigmas[index].item(), sigmas[index + 1].item()
    dt = nxt - sigma
    denominator = 1 - (sigmas[1].item() if sigma == 1 else sigma)  # Flow-GRPO: sigmas[1] at sigma = 1
    std_t = level * math.sqrt(sigma / denominator)
    x64, v64 = x.double(), v.double()
    expected_mean = x64 * (1 + std_t**2 / (2 * sigma) * dt) + v64 * (1 + std_t**2 * (1 - sigma) / (2 * sigma)) * dt
    expected_std = std_t * math.sqrt(-dt)

    mean, std = flow_step(scheduler, v, scheduler.timesteps[index], x, level)
    torch.testing.assert_close(mean.double(), expected_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(std.flatten(), torch.full((2,), expected_std), rtol=1e-5, atol=0)

    prev = torch.randn(2, 4, 8, 8, generator=generator)
    _, log_prob = step_with_logprob(scheduler, v, scheduler.timesteps[index], x, level, prev_sample=prev)
    normal = torch.distributions.Normal(expected_mean, torch.tensor(expected_std, dtype=torch.float64))
    expected_log_prob = normal.log_prob(prev.double()).mean(dim=(1, 2, 3))
    torch.testing.assert_close(log_prob.double(), expected_log_prob, rtol=1e-5, atol=1e-5)


def test_first_step_at_sigma_one_has_finite_std():
    scheduler = _scheduler()
    assert scheduler.sigmas[0].item() == 1.0
    _, std = flow_step(scheduler, torch.zeros(1, 4, 8, 8), scheduler.timesteps[0], torch.zeros(1, 4, 8, 8), 0.7)
    assert torch.isfinite(std).all() and (std > 0).all()


def test_noise_level_zero_is_diffusers_euler_step():
    scheduler = _scheduler(num_steps=6)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 8, 8, generator=generator)
    for index, t in enumerate(scheduler.timesteps):
        v = torch.randn(3, 4, 8, 8, generator=generator)
        mean, std = step_gaussian(scheduler, v, t.expand(3), x, 0.0)
        scheduler._step_index = index  # diffusers' step keeps its own counter
        expected = scheduler.step(v, t, x).prev_sample
        torch.testing.assert_close(mean, expected, rtol=1e-6, atol=1e-6)
        assert (std == 0).all()
        x = expected


def test_per_sample_timesteps_equal_single_calls():
    scheduler = _scheduler()
    generator = torch.Generator().manual_seed(1)
    x, v = torch.randn(3, 4, 8, 8, generator=generator), torch.randn(3, 4, 8, 8, generator=generator)
    timesteps = scheduler.timesteps[[0, 4, 9]]
    batched_mean, batched_std = flow_step(scheduler, v, timesteps, x, 0.7)
    for row in range(3):
        mean, std = flow_step(scheduler, v[row : row + 1], timesteps[row : row + 1], x[row : row + 1], 0.7)
        torch.testing.assert_close(batched_mean[row : row + 1], mean)
        torch.testing.assert_close(batched_std[row : row + 1], std)


def test_flow_chain_records_its_own_log_probs_and_window():
    """`sample_latents` on a flow scheduler: each recorded transition re-scores to its log-prob; outside the
    window the latents are the deterministic Euler steps."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    weight = torch.randn(4, 4, generator=torch.Generator().manual_seed(2)) * 0.1

    def predict(latents: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return torch.einsum("oc,bchw->bohw", weight, latents) * (timesteps.view(-1, 1, 1, 1) / 1000)

    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    latents, log_probs, timesteps = sample_latents(
        predict, scheduler, noise, 6, 0.7, torch.Generator().manual_seed(4), stochastic=range(0, 2)
    )
    assert latents.shape == (2, 7, 4, 8, 8) and log_probs.shape == (2, 6)
    torch.testing.assert_close(latents[:, 0], noise)
    for i, t in enumerate(timesteps):
        x, t_b = latents[:, i], t.expand(2)
        if i < 2:
            _, scored = step_with_logprob(scheduler, predict(x, t_b), t_b, x, 0.7, prev_sample=latents[:, i + 1])
            torch.testing.assert_close(scored, log_probs[:, i])
        else:
            mean, _ = step_gaussian(scheduler, predict(x, t_b), t_b, x, 0.0)
            torch.testing.assert_close(latents[:, i + 1], mean)
            assert (log_probs[:, i] == 0).all()


def test_flux_schedule_follows_resolution():
    """FLUX's dynamic shift: more image patches, larger shift, so the chain spends longer at high noise."""
    config = dict(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096,
    )  # fmt: skip
    small, large = FluxScheduler(**config), FluxScheduler(**config)
    set_timesteps(small, 4, torch.zeros(1, 16, 32, 32))
    set_timesteps(large, 4, torch.zeros(1, 16, 128, 128))
    assert small.sigmas[0] == large.sigmas[0] == 1.0
    assert (large.sigmas[1:-1] > small.sigmas[1:-1]).all()
    check_schedule(large, 4, torch.zeros(1, 16, 128, 128))


def test_bad_flow_schedule_refused():
    scheduler = _scheduler()
    scheduler.sigmas = torch.tensor([1.0, 0.5, 0.5, 0.0])
    with pytest.raises(TexforceError, match="do not decrease"):
        from texforce.sampling import check_variance

        check_variance(scheduler)
