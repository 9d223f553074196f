"""The DDIM log-probability step against its closed form and against diffusers' DDIMScheduler.step."""

import math

import pytest
import torch

from texforce.bases.sd import sd_ddim_scheduler
from texforce.errors import TexforceError
from texforce.sampling import check_schedule, step_with_logprob


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_step_matches_diffusers_with_same_noise(prediction_type, eta):
    scheduler = sd_ddim_scheduler(prediction_type=prediction_type)
    scheduler.set_timesteps(20)
    torch.manual_seed(0)
    sample, output = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    for t in scheduler.timesteps[[0, 7, -1]]:
        z = torch.randn(3, 4, 8, 8)
        expected = scheduler.step(output, t, sample, eta=eta, variance_noise=z).prev_sample
        generator = torch.Generator().manual_seed(5)
        ours, log_prob = step_with_logprob(scheduler, output, int(t), sample, eta, generator=generator)
        z_ours = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(5))
        expected_ours = scheduler.step(output, t, sample, eta=eta, variance_noise=z_ours).prev_sample
        torch.testing.assert_close(ours, expected_ours, atol=1e-5, rtol=1e-5)
        # scoring diffusers' own transition: the log-density of its noise z, with sigma_t from eq. (16)
        _, scored = step_with_logprob(scheduler, output, int(t), sample, eta, prev_sample=expected)
        prev_t = int(t) - 1000 // 20
        a_t = scheduler.alphas_cumprod[int(t)]
        a_prev = scheduler.alphas_cumprod[prev_t] if prev_t >= 0 else scheduler.final_alpha_cumprod
        std = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        closed_form = (-(z**2) / 2 - math.log(std) - 0.5 * math.log(2 * math.pi)).mean(dim=(1, 2, 3))
        torch.testing.assert_close(scored, closed_form, atol=2e-4, rtol=1e-4)
        assert log_prob.shape == (3,)


def test_log_prob_equals_normal_density():
    scheduler = sd_ddim_scheduler()
    scheduler.set_timesteps(10)
    torch.manual_seed(1)
    sample, output, prev = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    t = int(scheduler.timesteps[3])
    a_t, a_prev = scheduler.alphas_cumprod[t], scheduler.alphas_cumprod[t - 100]
    x0 = (sample - (1 - a_t).sqrt() * output) / a_t.sqrt()
    std = ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
    mean = a_prev.sqrt() * x0 + (1 - a_prev - std**2).sqrt() * output
    expected = torch.distributions.Normal(mean, std).log_prob(prev).mean(dim=(1, 2, 3))
    _, log_prob = step_with_logprob(scheduler, output, t, sample, 1.0, prev_sample=prev)
    torch.testing.assert_close(log_prob, expected, atol=1e-5, rtol=1e-5)


def test_per_sample_timesteps_equal_separate_calls():
    scheduler = sd_ddim_scheduler()
    scheduler.set_timesteps(10)
    torch.manual_seed(2)
    sample, output, prev = torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4, 4), torch.randn(3, 4, 4, 4)
    timesteps = scheduler.timesteps[[0, 4, 9]]
    _, batched = step_with_logprob(scheduler, output, timesteps, sample, 1.0, prev_sample=prev)
    for i, t in enumerate(timesteps):
        _, single = step_with_logprob(
            scheduler, output[i : i + 1], int(t), sample[i : i + 1], 1.0, prev_sample=prev[i : i + 1]
        )
        torch.testing.assert_close(batched[i : i + 1], single)


def test_log_prob_gradient_flows_to_model_output():
    scheduler = sd_ddim_scheduler()
    scheduler.set_timesteps(10)
    output = torch.randn(2, 4, 4, 4, requires_grad=True)
    _, log_prob = step_with_logprob(
        scheduler, output, 501, torch.randn(2, 4, 4, 4), 1.0, prev_sample=torch.randn(2, 4, 4, 4)
    )
    log_prob.sum().backward()
    assert output.grad is not None and output.grad.abs().sum() > 0


def test_zero_variance_schedule_is_refused():
    with pytest.raises(TexforceError, match="zero-variance"):
        check_schedule(sd_ddim_scheduler(steps_offset=0), 10)
    check_schedule(sd_ddim_scheduler(), 10)
