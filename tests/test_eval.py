"""`texforce eval`: configurations × fixed seeds × prompts × rewards → CSV, grid, mean and 95% CI."""

import csv
import json

import pytest
import torch
from PIL import Image

from texforce.adapters.files import save_adapters
from texforce.bases.loading import add_lora, load_pipeline
from texforce.cli.main import main
from texforce.config import LoraConfig, UNetLoraConfig
from texforce.images import MIN_CAPTIONED_SIDE
from texforce.observe.evaluation import summarise


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    """A text-encoder and a U-Net adapter on the tiny model, with non-zero updates."""
    root = tmp_path_factory.mktemp("eval_adapters")
    pipe = load_pipeline(str(tiny_model_dir))
    add_lora(pipe.text_encoder, LoraConfig(rank=4, alpha=4), seed=0)
    add_lora(pipe.unet, UNetLoraConfig(rank=4, alpha=4), seed=1)
    with torch.no_grad():
        for module in (pipe.text_encoder, pipe.unet):
            for name, param in module.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.3, generator=torch.Generator().manual_seed(2))
    save_adapters(root / "text", {"text_encoder": pipe.text_encoder}, str(tiny_model_dir))
    save_adapters(root / "unet", {"unet": pipe.unet}, str(tiny_model_dir))
    return root / "text", root / "unet"


def test_eval_compares_configurations_on_fixed_seeds(tiny_model_dir, adapters, tmp_path, capsys):
    text, unet = adapters
    configs = ["base", f"text={text}", f"unet={unet}", f"text={text},unet={unet}"]
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(tiny_model_dir), "--prompts", "animals", "--num-prompts", "2", "--seeds", "2",
            "--steps", "2", "--reward", "jpeg_compressibility", "--reward", "jpeg_incompressibility:2"]  # fmt: skip
    argv += ["-o", str(out)]
    assert main([*argv, *(arg for c in configs for arg in ("--config", c))]) == 0
    assert capsys.readouterr().out.strip().endswith(str(out))
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 * 2 * 2 * 2  # configurations × prompts × seeds × rewards
    assert {r["prompt"] for r in rows} == {"A photo of a rabbit", "A photo of a deer"}  # held-out animals
    scores = {c: [float(r["score"]) for r in rows if r["config"] == c] for c in configs}
    assert len({tuple(v) for v in scores.values()}) == 4, "each adapter must change the images"
    summary = json.loads((out / "summary.json").read_text())
    assert [(s["setup"], s["reward"]) for s in summary][:2] == [("base", "jpeg_compressibility"),
                                                                ("base", "jpeg_incompressibility:2")]  # fmt: skip
    assert all(s["n"] == 4 and s["ci_low"] <= s["mean"] <= s["ci_high"] for s in summary)
    grid = Image.open(out / "grid.png")  # prompts × configurations, each tile captioned
    assert grid.width == 2 * MIN_CAPTIONED_SIDE and grid.height > 4 * MIN_CAPTIONED_SIDE
    captions = grid.text["Description"].splitlines()
    first = {(r["config"], r["prompt"], r["reward"]): float(r["score"]) for r in rows if r["seed"] == "0"}
    assert len(captions) == 8 and captions[0] == (
        f"base · {first['base', 'A photo of a rabbit', 'jpeg_compressibility']:.3f} | "
        f"{first['base', 'A photo of a rabbit', 'jpeg_incompressibility:2']:.3f} · A photo of a rabbit"
    )
    rows_of_configs = [config for config in configs for _ in range(2)]  # one row of two prompts per configuration
    assert all(c.startswith(f"{config} · ") for config, c in zip(rows_of_configs, captions, strict=True))


def test_eval_is_reproducible(tiny_model_dir, tmp_path):
    argv = ["eval", "--model", str(tiny_model_dir), "--num-prompts", "1", "--seeds", "2", "--steps", "2"]
    for name in ("a", "b"):
        assert main([*argv, "-o", str(tmp_path / name)]) == 0
    assert (tmp_path / "a" / "results.csv").read_text() == (tmp_path / "b" / "results.csv").read_text()


def test_the_grid_can_show_the_first_prompts_only(tiny_model_dir, tmp_path):
    from texforce.observe.evaluation import AdapterSetup, run_eval

    args = {"device": torch.device("cpu"), "dtype": "float32", "steps": 2, "guidance_scale": 5.0,
            "max_sequence_length": None, "batch_size": 8}  # fmt: skip
    prompts = ["A photo of a rabbit", "A photo of a deer", "A photo of a cat"]
    out = tmp_path / "eval"
    run_eval(str(tiny_model_dir), [AdapterSetup("base")], prompts, [0, 1], ["jpeg_compressibility"], out, args,
             ("plain", "engineered"), grid_prompts=2)  # fmt: skip
    with open(out / "results.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 2 * 3 * 2  # every image is judged: styles × prompts × seeds
    grid = Image.open(out / "grid.png")  # one row per style, the first two prompts
    assert grid.width == 2 * MIN_CAPTIONED_SIDE and len(grid.text["Description"].splitlines()) == 2 * 2


def test_summary_confidence_interval():
    rows = [{"config": "c", "reward": "r", "score": s} for s in (1.0, 2.0, 3.0, 4.0)]
    (s,) = summarise(rows, ["c"], ["r"])
    assert s.mean == 2.5 and abs(s.std - 1.2909944) < 1e-6
    assert abs(s.ci_high - s.mean - 3.182 * s.std / 2) < 1e-9  # Student t, 3 degrees of freedom


@pytest.mark.parametrize(
    "config, message",
    [
        ("lora=x", "write base, text=PATH, unet=PATH or text=PATH,unet=PATH"),
        ("text=/no/such/adapter", "adapter not found: /no/such/adapter"),
    ],
)
def test_eval_bad_config(config, message, tmp_path, capsys):
    assert main(["eval", "--config", config, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"texforce eval: error: --config {config!r}: {message}" in err
    assert not (tmp_path / "out").exists()
