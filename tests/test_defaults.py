"""Defaults follow the model: `sample`, `eval`, `score` and `fuse` take the base an adapter records (else the offline
world) and the sampler settings, prompts and reward of the training config that fits it; `eval RUN` takes the run's."""

import csv

import pytest
from conftest import tiny_overrides
from PIL import Image

from texforce.bases import loading as models
from texforce.cli.main import main
from texforce.observe import evaluation
from texforce.observe.evaluation import Summary
from texforce.prompts import load_prompt_set
from texforce.run.defaults import choose_base, defaults_for, judge
from texforce.run.run_config import RunConfig, load_config


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    """A finished one-epoch run on the tiny model, with settings unlike the library defaults."""
    root = tmp_path_factory.mktemp("defaults")
    overrides = tiny_overrides(tiny_model_dir, root, train__num_epochs=1, reward="jpeg_incompressibility")
    assert main(["train", "--quiet", *overrides]) == 0
    return root / "run"


@pytest.fixture
def loaded(monkeypatch) -> list:
    """Every pipeline the command loads, as it was loaded (its base is `config.base`)."""
    pipes = []
    prepare = models.prepare_pipeline

    def spy(config, device):
        pipes.append((config.base, prepare(config, device)))
        return pipes[-1][1]

    monkeypatch.setattr(models, "prepare_pipeline", spy)
    return pipes


def test_the_base_is_the_model_given_else_the_adapters_else_the_embedded_default(run, tiny_model_dir):
    default = load_config("default")
    assert choose_base(None) == default.model.base == "texforce/world"
    assert choose_base(None, [None, run / "lora"]) == str(tiny_model_dir)  # recorded in adapter_config.json
    assert choose_base(None, [run / "lora" / "text_encoder"]) == str(tiny_model_dir)
    assert choose_base("some/model", [run / "lora"]) == "some/model"


def test_settings_come_from_the_config_that_fits_the_base():
    default, library = load_config("default"), RunConfig()
    world = defaults_for(default.model.base)
    assert (world.config.sample.num_steps, world.config.sample.guidance_scale) == (20, 5.0)
    assert (judge(world.config), world.batch_size) == ("world_score", None)  # the world: all images at once
    assert world.config.prompts.train == default.prompts.train == "world"
    # two shipped configs name SD 1.4: the one on the general prompts speaks for it, not the hand task's
    sd14 = defaults_for("CompVis/stable-diffusion-v1-4")
    assert sd14.source.startswith("configs/sd14_imagereward.yaml")
    sample = sd14.config.sample
    assert (sample.num_steps, sample.guidance_scale, judge(sd14.config)) == (50, 7.5, "imagereward")
    other = defaults_for("someone/my-sd-finetune")  # no config names it, nothing identifies it: the library's
    assert other.config.model.base == "someone/my-sd-finetune"
    assert (other.config.sample.num_steps, other.config.sample.guidance_scale) == (library.sample.num_steps, 7.5)
    assert (other.config.prompts.train, judge(other.config)) == ("animals", "jpeg_compressibility")


def test_sample_without_a_model_draws_the_world_with_its_settings(tmp_path, loaded, capsys):
    """Was: pure noise from texforce/tiny-random at 50 steps, CFG 7.5."""
    out = tmp_path / "circles.png"
    assert main(["sample", "--prompt", "two red circles", "-o", str(out)]) == 0
    ((base, pipe),) = loaded
    assert base == "texforce/world"
    assert len(pipe.scheduler.timesteps) == 20 and pipe.guidance_scale == 5.0
    (caption,) = Image.open(out).text["Description"].splitlines()
    score, prompt = caption.split(" · ")
    assert prompt == "two red circles" and 0 <= float(score) <= 1  # world_score's range
    assert Image.open(tmp_path / "circles_p0_s0.png").size == (64, 64)


def test_sample_with_an_adapter_uses_the_base_it_records(run, tiny_model_dir, tmp_path, loaded):
    out = tmp_path / "x.png"
    assert (
        main(["sample", "--text-lora", str(run / "lora"), "--prompt", "a cat", "--reward", "none", "-o", str(out)])
        == 0
    )
    assert [base for base, _ in loaded] == [str(tiny_model_dir)]
    assert len(loaded[0][1].scheduler.timesteps) == RunConfig().sample.num_steps  # the library's, for this base
    assert Image.open(out).text["Description"] == "a cat"  # --reward none: the prompt alone


def test_eval_without_a_model_judges_the_world_on_its_held_out_prompts(tmp_path, monkeypatch):
    """Was: animals, JPEG, 50 steps, CFG 7.5 on texforce/tiny-random. The held-out prompts are the default run's:
    the headline set (the ceiling's 64 held-out plain prompts of the four families)."""
    calls = []

    def record(base, setups, prompts, seeds, rewards, output, options, styles):
        calls.append((base, list(prompts), list(rewards), options["steps"], options["guidance_scale"]))
        output.mkdir()
        (output / "results.csv").write_text("config,style,prompt,seed,reward,score\n")  # run_eval's output
        return [Summary("base", rewards[0], 1, 0.0, 0.0, 0.0, 0.0)]

    monkeypatch.setattr(evaluation, "run_eval", record)
    assert main(["eval", "-o", str(tmp_path / "eval")]) == 0
    headline = list(load_prompt_set("world", "world_headline").eval)
    assert len(headline) == 64 and not set(headline) & set(load_prompt_set("world_all").train)
    assert calls == [("texforce/world", headline, ["world_score"], 20, 5.0)]


def test_eval_of_a_run_takes_everything_from_the_run(run, tiny_model_dir, monkeypatch, capsys):
    rendered = []
    render = evaluation.render

    def spy(setup, base, prompts, seeds, args, style="plain"):
        rendered.append((setup.label, base, args["steps"], args["guidance_scale"]))
        return render(setup, base, prompts, seeds, args, style)

    monkeypatch.setattr(evaluation, "render", spy)
    assert main(["eval", str(run), "--num-prompts", "1", "--seeds", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(run / "eval")
    config = load_config(run / "config.yaml")
    steps, guidance = config.sample.num_steps, config.sample.guidance_scale
    lora = f"text={run / 'lora'}"
    assert rendered == [("base", str(tiny_model_dir), steps, guidance), (lora, str(tiny_model_dir), steps, guidance)]
    with open(run / "eval" / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["config"], r["prompt"], r["reward"]) for r in rows} == {
        (c, "A photo of a rabbit", "jpeg_incompressibility") for c in ("base", lora)
    }


def test_score_without_a_reward_uses_the_worlds_and_resizes_with_a_warning(tmp_path, capsys):
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    Image.new("RGB", (64, 64), "white").save(small)
    Image.new("RGB", (256, 256), "white").save(large)
    assert main(["score", str(small), str(large), "--prompt", "a red circle"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0].split() == ["image", "world_score"]
    assert err == (
        f"texforce score: warning: resized 1 of 2 images to 64×64, which world_score judges (e.g. {large}, "
        "256×256); a grid of samples would score as one picture\n"
    )
    assert [line.split()[1] for line in out.splitlines()[1:]] == ["0.0000", "0.0000"]  # no red circle on white
