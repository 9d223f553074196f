"""SD-Turbo and SDXL-Turbo: their trailing timestep spacing survives loading, 1–4 steps train with either algorithm,
an undefined step variance is a one-line error (not NaN), and the official adapters' layouts load and take effect."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides
from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
from safetensors.torch import load_file

from texforce.adapters.files import load_text_adapters
from texforce.bases.loading import load_pipeline
from texforce.bases.sd import build_tiny_pipeline, build_tiny_sdxl_pipeline, sd_ddim_scheduler
from texforce.errors import TexforceError
from texforce.run.run_config import load_config
from texforce.run.train import train_run
from texforce.sampling import check_schedule, sample_latents

OFFICIAL = Path(__file__).parent / "fixtures" / "official"
TURBO_SCHEDULER = {  # the published scheduler_config.json of stabilityai/sd-turbo and sdxl-turbo, less the class
    "_diffusers_version": "0.24.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "interpolation_type": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "timestep_spacing": "trailing",
    "trained_betas": None,
    "use_karras_sigmas": False,
}
SCHEDULERS = {"sd_turbo": EulerDiscreteScheduler, "sdxl_turbo": EulerAncestralDiscreteScheduler}


@pytest.fixture(scope="module")
def turbo_dirs(tmp_path_factory) -> dict[str, Path]:
    """Tiny SD-Turbo (SD 2.x layout) and SDXL-Turbo folders with the Turbo models' Euler schedulers."""
    folders = {}
    builders = {"sd_turbo": build_tiny_pipeline, "sdxl_turbo": build_tiny_sdxl_pipeline}
    for name, build in builders.items():
        pipe = build(image_size=32)
        folder = tmp_path_factory.mktemp(name) / "pipeline"
        pipe.save_pretrained(folder)
        cls = SCHEDULERS[name].__name__
        (folder / "scheduler" / "scheduler_config.json").write_text(
            json.dumps({"_class_name": cls, **TURBO_SCHEDULER})
        )
        index = json.loads((folder / "model_index.json").read_text())
        (folder / "model_index.json").write_text(json.dumps({**index, "scheduler": ["diffusers", cls]}))
        folders[name] = folder
    return folders


@pytest.mark.parametrize("name", ["sd_turbo", "sdxl_turbo"])
def test_loading_keeps_the_turbo_timesteps(turbo_dirs, name):
    scheduler = load_pipeline(str(turbo_dirs[name])).scheduler
    own = SCHEDULERS[name].from_pretrained(turbo_dirs[name] / "scheduler")
    assert isinstance(scheduler, DDIMScheduler) and scheduler.config.timestep_spacing == "trailing"
    for num_steps in (1, 2, 3, 4):
        check_schedule(scheduler, num_steps)  # every step has a defined, positive variance
        own.set_timesteps(num_steps)
        assert scheduler.timesteps.tolist() == own.timesteps.round().long().tolist()
    assert scheduler.timesteps.tolist() == [999, 749, 499, 249]


def test_undefined_variance_is_one_line_not_nan():
    """DDIM's default `set_alpha_to_one=True` ends a trailing chain at alpha 1: a zero-variance last step."""
    scheduler = sd_ddim_scheduler(timestep_spacing="trailing", set_alpha_to_one=True)
    with pytest.raises(TexforceError, match=r"trailing spacing.*set_alpha_to_one=True, 1 steps\) has zero-var") as e:
        check_schedule(scheduler, 1)
    assert "\n" not in str(e.value)

    def predict(latents, timesteps):
        raise AssertionError("the U-Net must not run on a schedule whose log-probabilities are NaN")

    with pytest.raises(TexforceError, match="zero-variance steps at t=\\[249\\]"):
        sample_latents(predict, scheduler, torch.zeros(1, 4, 8, 8), 4, eta=1.0)
    check_schedule(sd_ddim_scheduler(timestep_spacing="trailing"), 1)  # SD's set_alpha_to_one=False: defined


@pytest.mark.parametrize(
    "name, algorithm, num_steps",
    [("sd_turbo", "backprop", 1), ("sdxl_turbo", "backprop", 2), ("sdxl_turbo", "ddpo", 1)],
)
def test_few_step_turbo_trains(turbo_dirs, tmp_path, name, algorithm, num_steps):
    extra = {"reward": "world_clipscore", "sample__eta": 0.0} if algorithm == "backprop" else {}
    overrides = tiny_overrides(
        turbo_dirs[name],
        tmp_path,
        train__algorithm=algorithm,
        train__num_epochs=1,
        sample__num_steps=num_steps,
        sample__guidance_scale=0.0,
        backprop__num_grad_steps=1,
        **extra,
    )
    run = train_run(None, overrides, quiet=True)
    (row,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(v) for k, v in row.items() if isinstance(v, float)), row
    assert row["faults/dropped_samples"] == 0 and row["ppo/grad_norm"] > 0
    weights = load_file(run / "lora" / "text_encoder" / "adapter_model.safetensors")
    assert any(v.abs().max() > 0 for k, v in weights.items() if "lora_B" in k)


def one_step_images(pipe) -> torch.Tensor:
    """SD-Turbo / SDXL-Turbo inference as published: one step, no guidance."""
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    return pipe(
        "A photo of a cat", num_inference_steps=1, guidance_scale=0.0, generator=generator, output_type="pt"
    ).images


def test_official_sd_turbo_peft_layout_loads_and_changes_the_image(turbo_dirs):
    pipe = load_pipeline(str(turbo_dirs["sd_turbo"]))
    before = one_step_images(pipe)
    assert load_text_adapters(pipe, OFFICIAL / "sd-turbo_texforce", base="stabilityai/sd-turbo") == ["text_encoder"]
    assert (one_step_images(pipe) - before).abs().max() > 1e-3
    weights = load_file(OFFICIAL / "sd-turbo_texforce" / "adapter_model.safetensors")
    prefix = "base_model.model.text_model.encoder.layers.1.self_attn.v_proj"
    expected = weights[f"{prefix}.lora_B.weight"] @ weights[f"{prefix}.lora_A.weight"]  # alpha = r: scale 1
    layer = dict(pipe.text_encoder.named_modules())["encoder.layers.1.self_attn.v_proj"]
    torch.testing.assert_close(layer.get_delta_weight("default"), expected)


def test_official_sdxl_turbo_diffusers_layout_loads_as_stock_diffusers_does(turbo_dirs):
    ours, stock = load_pipeline(str(turbo_dirs["sdxl_turbo"])), load_pipeline(str(turbo_dirs["sdxl_turbo"]))
    before = one_step_images(ours)
    official = OFFICIAL / "sdxl-turbo_texforce"
    assert load_text_adapters(ours, official) == ["text_encoder", "text_encoder_2"]
    stock.load_lora_weights(official)
    images = one_step_images(ours)
    assert (images - before).abs().max() > 1e-3
    torch.testing.assert_close(images, one_step_images(stock), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "name, base, algorithm",
    [
        ("sd_turbo_imagereward", "stabilityai/sd-turbo", "backprop"),
        ("sdxl_turbo_imagereward", "stabilityai/sdxl-turbo", "backprop"),
        ("sdxl_imagereward", "stabilityai/stable-diffusion-xl-base-1.0", "ddpo"),
    ],
)
def test_shipped_sdxl_and_turbo_configs(name, base, algorithm):
    config = load_config(name)
    assert (config.model.base, config.train.algorithm, config.reward) == (base, algorithm, "imagereward")
    if "turbo" in name:
        assert config.sample.guidance_scale == 0 and 1 <= config.sample.num_steps <= 4
