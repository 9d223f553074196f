import pytest

from texforce.config import to_dict
from texforce.errors import TexforceError
from texforce.run.run_config import builtin_configs, load_config


def test_defaults_are_the_papers():
    config = load_config()
    assert (config.text_lora.rank, config.text_lora.alpha, config.text_lora.init) == (16, 16.0, "gaussian")
    assert config.text_lora.target_modules == ["q_proj", "k_proj", "v_proj", "out_proj"]
    assert config.unet_lora.target_modules == ["to_q", "to_k", "to_v", "to_out.0"] and not config.unet_lora.use
    assert config.sample.eta == 1.0 and config.train.use_lora_for_negative


def test_overrides_are_typed():
    config = load_config(
        None,
        [
            "ddpo.clip_range=2e-4",
            "unet_lora.use=true",
            "sample.num_steps=20",
            "text_lora.target_modules=q_proj,v_proj",
        ],
    )
    assert config.ddpo.clip_range == 2e-4 and config.unet_lora.use and config.sample.num_steps == 20
    assert config.text_lora.target_modules == ["q_proj", "v_proj"]
    assert config.ddpo.num_train_timesteps(config.sample.num_steps) == 20


@pytest.mark.parametrize(
    "override, message",
    [
        ("ddpo.clip_rnge=1", "did you mean ddpo.clip_range"),
        ("train.clip_range=1", "did you mean ddpo.clip_range"),
        ("modl.base=x", "did you mean model"),
        ("text_lora.learning_rate=-1", "text_lora.learning_rate must be > 0"),
        ("sample.eta=-0.5", "sample.eta must be >= 0, got -0.5"),
        ("sample.eta=0", "sample.eta must be > 0 for DDPO"),
        ("ddpo.timestep_fraction=0", r"timestep_fraction must be in \(0, 1\]"),
        ("ddpo.timestep_fraction=1.5", r"timestep_fraction must be in \(0, 1\]"),
        ("ddpo.timesteps_per_call=0", "ddpo.timesteps_per_call must be >= 1, got 0"),
        ("train.batch_size_per_device=3", "must divide the samples per epoch"),
        ("train.gradient_accumulation_steps=3", "gradient_accumulation_steps .* must divide"),
        ("train.num_epochs=many", "train.num_epochs must be int"),
        ("reward=aesthetics_v9", "unknown reward 'aesthetics_v9'; valid rewards"),
        ("prompts.train=no_such_set", "neither a prompt file nor a built-in set"),
        ("advantage.mode=global", "advantage.mode must be per_prompt, batch or group"),
        ("model.dtype=fp8", "model.dtype must be bf16, fp16 or fp32"),
        ("train=3", "train must be a section"),
        ("seed", "must look like section.key=value"),
    ],
)
def test_bad_values_fail_with_one_line(override, message):
    with pytest.raises(TexforceError, match=message) as error:
        load_config(None, [override])
    assert "\n" not in str(error.value)


def test_config_file_errors(tmp_path):
    with pytest.raises(TexforceError, match="neither a file nor a built-in config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(TexforceError, match="not valid YAML"):
        load_config(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(TexforceError, match="must hold a mapping"):
        load_config(listing)


@pytest.mark.parametrize("name", sorted(builtin_configs()))
def test_every_shipped_config_loads_and_validates(name):
    config = load_config(name)
    assert to_dict(load_config(name)) == to_dict(config)


def test_group_size_must_divide_the_epoch():
    with pytest.raises(TexforceError, match=r"advantage.group_size \(5\) must be >= 2 and divide the samples per"):
        load_config(None, ["advantage.mode=group", "advantage.group_size=5"])
    assert load_config(None, ["advantage.mode=group", "advantage.group_size=8"]).advantage.group_size == 8


def test_second_text_encoder_takes_text_lora_unless_overridden():
    config = load_config(None, ["text_lora.rank=8", "text_lora_2.alpha=4"])
    first, second = config.text_lora_of(0), config.text_lora_of(1)
    assert (first.rank, first.alpha, second.rank, second.alpha) == (8, 16.0, 8, 4.0)
    assert second.target_modules == first.target_modules and second.learning_rate == first.learning_rate
    with pytest.raises(TexforceError, match=r"text_lora_2.rank must be >= 1, got 0"):
        load_config(None, ["text_lora_2.rank=0"])
    with pytest.raises(TexforceError, match=r"text_lora_2.target_modules must not be empty"):
        load_config(None, ["text_lora_2.target_modules=[]"])
