"""Sampling chains of DDIM (Stable Diffusion, SDXL) or of flow matching (SD3, FLUX): with per-step Gaussian
log-probabilities (DDPO's actions and their likelihoods), or as one differentiable chain whose last K steps keep
their graph (direct reward backprop). `step_gaussian` is the one step both serve, chosen by the scheduler.

One module per part: `schedulers` (the two scheduler kinds), `trajectory` (what a chain records), `ddim` and `flow`
(each chain's step as a Gaussian), `step` (draw or score a step with its log-probability), `loop` (the guided
denoising loops and decoding). Their public names are re-exported here.
"""

from texforce.sampling.ddim import ddim_step
from texforce.sampling.flow import flow_step, flux_image_ids, pack_flux_latents, unpack_flux_latents
from texforce.sampling.loop import (
    NoisePredictor,
    decode,
    decode_latents,
    denoise,
    denoiser_output,
    guided_noise_fn,
    sample_latents,
)
from texforce.sampling.schedulers import (
    FluxScheduler,
    Scheduler,
    check_schedule,
    check_variance,
    initial_latents_of,
    is_flow,
    model_input,
    set_timesteps,
)
from texforce.sampling.step import gaussian_log_prob, step_gaussian, step_kl, step_with_logprob
from texforce.sampling.trajectory import Conditioning, LatentRows, Trajectory

__all__ = [
    "Conditioning",
    "FluxScheduler",
    "LatentRows",
    "NoisePredictor",
    "Scheduler",
    "Trajectory",
    "check_schedule",
    "check_variance",
    "ddim_step",
    "decode",
    "decode_latents",
    "denoise",
    "denoiser_output",
    "flow_step",
    "flux_image_ids",
    "gaussian_log_prob",
    "guided_noise_fn",
    "initial_latents_of",
    "is_flow",
    "model_input",
    "pack_flux_latents",
    "sample_latents",
    "set_timesteps",
    "step_gaussian",
    "step_kl",
    "step_with_logprob",
    "unpack_flux_latents",
]
