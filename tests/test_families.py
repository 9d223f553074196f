"""Each base samples with its own family's published settings (steps, guidance, T5 length), known from its folder
as well as its name; `sample` and `eval` render in batches that give the same images as one by one and never hand
the pipeline more than the batch size."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from texforce.bases import loading as models
from texforce.bases.families import BUILT_IN_FAMILIES, FAMILIES, detect_family
from texforce.bases.flow import FLOW_BUILT_IN, build_tiny_flux_pipeline, build_tiny_sd3_pipeline
from texforce.bases.rendering import render_images
from texforce.bases.sd import BUILT_IN, build_tiny_pipeline, build_tiny_sdxl_pipeline
from texforce.cli.main import main
from texforce.config import ModelConfig
from texforce.run.defaults import defaults_for

SIZE = 32  # pixels of the folder copies


@pytest.fixture
def calls(monkeypatch) -> list[dict]:
    """Every pipeline call: its number of prompts and sampler keywords. Each call renders 1 step, to stay fast."""
    records = []
    for cls in models.PIPELINES.values():

        def spy(self, prompt, *, _call=cls.__call__, **kwargs):
            keys = ("num_inference_steps", "guidance_scale", "max_sequence_length")
            records.append({"prompts": len(prompt), **{key: kwargs.get(key) for key in keys}})
            return _call(self, prompt, **{**kwargs, "num_inference_steps": 1})

        monkeypatch.setattr(cls, "__call__", spy)
    return records


def settings(family: str) -> tuple:
    row = FAMILIES[family]
    return row.num_steps, row.guidance_scale, row.max_sequence_length


def test_every_built_in_has_a_family():
    assert BUILT_IN_FAMILIES.keys() == BUILT_IN.keys() | FLOW_BUILT_IN.keys()


@pytest.mark.parametrize(
    ("base", "family"),
    [
        ("stabilityai/stable-diffusion-2-1", "SD 1.x/2.x"),
        ("someone/my-xl-finetune", "SDXL"),
        ("stabilityai/stable-diffusion-3-medium-diffusers", "SD3 Medium"),
        ("stabilityai/stable-diffusion-3.5-large", "SD3.5 Large"),
        ("black-forest-labs/FLUX.1-dev", "FLUX.1-dev"),
        ("texforce/sd35-large-random", "SD3.5 Large"),
        ("texforce/flux-schnell-random", "FLUX.1-schnell"),
    ],
)
def test_a_base_without_a_config_takes_its_familys_published_settings(base, family):
    resolved = defaults_for(base)
    config = resolved.config
    assert (config.sample.num_steps, config.sample.guidance_scale, config.model.max_sequence_length) == settings(
        family
    )
    assert resolved.batch_size == FAMILIES[family].batch_size and family in resolved.source


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("stabilityai/stable-diffusion-xl-base-1.0", (50, 5.0, None)),
        ("stabilityai/sdxl-turbo", (1, 0.0, None)),
        ("stabilityai/sd-turbo", (1, 0.0, None)),
        ("stabilityai/stable-diffusion-3.5-large-turbo", (4, 0.0, 256)),  # T5 length: the family's
        ("black-forest-labs/FLUX.1-schnell", (4, 0.0, 256)),
    ],
)
def test_a_base_a_shipped_config_names_takes_that_configs_settings(base, expected):
    resolved = defaults_for(base)
    config = resolved.config
    assert (config.sample.num_steps, config.sample.guidance_scale, config.model.max_sequence_length) == expected
    assert resolved.source.startswith("configs/") and base in resolved.source


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Local copies of the tiny built-ins, some with a config field as the family's real model has it."""
    root = tmp_path_factory.mktemp("families")
    saved = {
        "sd": build_tiny_pipeline(image_size=SIZE),
        "sdxl": build_tiny_sdxl_pipeline(image_size=SIZE),
        "sd35-medium": build_tiny_sd3_pipeline(image_size=SIZE),  # MMDiT-X: a dual-attention block
        "flux": build_tiny_flux_pipeline(image_size=SIZE),
        "schnell": build_tiny_flux_pipeline(image_size=SIZE, guidance_embeds=False),
    }
    folders = {}
    for name, pipe in saved.items():
        pipe.save_pretrained(root / name)
        folders[name] = root / name
    for name in ("sd", "sdxl"):  # SD-Turbo's and SDXL-Turbo's published schedulers space their steps `trailing`
        folders[f"{name}-turbo"] = edited(folders[name], root / f"{name}-turbo", "scheduler/scheduler_config.json",
                                          timestep_spacing="trailing")  # fmt: skip
    transformer = "transformer/config.json"
    folders["sd35-large"] = edited(folders["sd35-medium"], root / "my-model", transformer, dual_attention_layers=[])
    folders["sd35-large-turbo"] = edited(folders["sd35-large"], root / "my-turbo", transformer)
    folders["sd3"] = edited(folders["sd35-large"], root / "older", transformer, qk_norm=None)
    return folders


def edited(source: Path, folder: Path, name: str, **fields: object) -> Path:
    """A copy of the pipeline folder `source` with `fields` set in its `name` JSON file."""
    shutil.copytree(source, folder)
    path = folder / name
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))
    return folder


@pytest.mark.parametrize(
    ("folder", "family"),
    [
        ("sd", "SD 1.x/2.x"),
        ("sd-turbo", "SD-Turbo"),
        ("sdxl", "SDXL"),
        ("sdxl-turbo", "SDXL-Turbo"),
        ("sd3", "SD3 Medium"),
        ("sd35-medium", "SD3.5 Medium"),
        ("sd35-large", "SD3.5 Large"),
        ("sd35-large-turbo", "SD3.5 Large Turbo"),  # its configs are Large's: the folder's name says turbo
        ("flux", "FLUX.1-dev"),
        ("schnell", "FLUX.1-schnell"),
    ],
)
def test_a_local_folder_is_known_by_its_configs_not_its_name(folders, folder, family):
    assert detect_family(str(folders[folder])).family.name == family


@pytest.mark.parametrize(
    ("base", "family"),
    [
        ("texforce/tiny-random", "SD 1.x/2.x"),
        ("texforce/tiny-sdxl-random", "SDXL"),
        ("texforce/tiny-sd3-random", "SD3.5 Medium"),
        ("texforce/tiny-flux-random", "FLUX.1-dev"),
        ("sd", "SD 1.x/2.x"),  # the folder copies: the same settings as their built-ins
        ("sdxl", "SDXL"),
        ("sd35-medium", "SD3.5 Medium"),
        ("flux", "FLUX.1-dev"),
        ("sd-turbo", "SD-Turbo"),
        ("sdxl-turbo", "SDXL-Turbo"),
        ("schnell", "FLUX.1-schnell"),
    ],
)
def test_sample_and_eval_without_flags_use_the_familys_settings(folders, base, family, calls, tmp_path, capsys):
    base = str(folders.get(base, base))
    expected = settings(family)
    assert (
        main(["sample", "--model", base, "--prompt", "a cat", "--reward", "none", "-o", str(tmp_path / "a.png")]) == 0
    )
    assert main(["eval", "--model", base, "--num-prompts", "1", "--seeds", "1", "-o", str(tmp_path / "eval")]) == 0
    assert [(c["num_inference_steps"], c["guidance_scale"]) for c in calls] == [expected[:2]] * 2
    if expected[2] is not None:  # SD3's and FLUX's T5 length
        assert [c["max_sequence_length"] for c in calls] == [expected[2]] * 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "sampler:" in line]
    assert len(lines) == 2 and all(family in line and f"{expected[0]} step" in line for line in lines)


def test_flags_win_over_the_defaults(calls, tmp_path, capsys):
    out = tmp_path / "a.png"
    args = ["--steps", "2", "--guidance-scale", "3", "--batch-size", "1", "--reward", "none", "-o", str(out)]
    assert main(["sample", "--model", "texforce/tiny-random", "--prompt", "a cat", "-n", "2", *args]) == 0
    assert [(c["prompts"], c["num_inference_steps"], c["guidance_scale"]) for c in calls] == [(1, 2, 3.0)] * 2
    assert "--steps, --guidance-scale, --batch-size as given" in capsys.readouterr().err


def test_batched_sample_gives_the_pixels_of_one_by_one(folders, tmp_path):
    """Each image has its own generator, so its noise is the same in any batch; the batched kernels round
    differently in the last float bits (about 1e-6), which can move a rare pixel by one level."""
    common = ["--model", str(folders["sd"]), "--prompt", "a cat", "--prompt", "a dog", "-n", "3", "--steps", "2"]
    for name, size in (("one", "1"), ("batched", "4")):  # 6 images: one by one; 4 + 2
        assert (
            main(["sample", *common, "--reward", "none", "--batch-size", size, "-o", str(tmp_path / f"{name}.png")])
            == 0
        )
    for p in range(2):
        for seed in range(3):
            one, batched = (
                np.asarray(Image.open(tmp_path / f"{n}_p{p}_s{seed}.png"), dtype=int) for n in ("one", "batched")
            )
            assert np.abs(one - batched).max() <= 1
    pipe = models.prepare_pipeline(ModelConfig(base=str(folders["sd"])), torch.device("cpu"))
    prompts, seeds = ["a cat", "a cat", "a dog", "a dog"], [0, 1, 0, 1]
    one, batched = (render_images(pipe, prompts, seeds, size, 2, 7.5) for size in (1, None))
    torch.testing.assert_close(batched, one, rtol=0, atol=1e-5)


def test_eval_never_sends_more_than_its_batch_size(calls, tmp_path):
    """Was: every prompt of a seed in one call, however many (64 prompts: a 128-image CFG batch)."""
    common = ["eval", "--model", "texforce/tiny-random", "--num-prompts", "3", "--seeds", "2", "--steps", "1"]
    assert main([*common, "--batch-size", "4", "-o", str(tmp_path / "a")]) == 0
    assert [c["prompts"] for c in calls] == [4, 2]  # 3 prompts × 2 seeds
    calls.clear()
    assert main([*common, "-o", str(tmp_path / "b")]) == 0
    assert max(c["prompts"] for c in calls) <= FAMILIES["SD 1.x/2.x"].batch_size
