"""The benchmarks' harnesses run end to end (tiny model, CPU); their figures are not asserted here: a measured time
is checked for its presence and type only (a clock on a busy machine can give any value, even a negative
difference)."""

import importlib
import json
import math

import pytest
import torch


def is_figure(value: object) -> bool:
    """A measured number: a finite int or float, of any size."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.parametrize("arch", ["sd15", "sdxl", "sd35-medium", "flux-dev"])
def test_speed_benchmark_smoke(arch):
    module = importlib.import_module("benchmarks.speed")
    figures = module.main(["--smoke", "--arch", arch])
    assert {f["model"] for f in figures} == {module.SMOKE_MODELS[arch]}
    assert {(f["mode"], f["figure"]) for f in figures} >= {("reference", "sampling"), ("texforce", "ppo_update")}
    assert all(is_figure(f["value"]) for f in figures if f["figure"] != "peak_memory")  # None without a GPU
    assert all("ratio_to_reference" in f for f in figures if f["mode"] == "texforce" and f["value"])
    denoiser = "transformer" if arch in module.FLOW_ARCHS else "unet"
    assert all(f["attention_kernels"][denoiser] for f in figures)
    if denoiser == "unet":
        assert {f["attention_kernels"]["unet"] for f in figures} == {"AttnProcessor2_0"}
    memory = next(f for f in figures if f["figure"] == "backprop_memory")
    assert memory["num_grad_steps"] == 1 and memory["gradient_checkpointing"] and "peak RSS" in memory["unit"]


def test_speed_benchmark_options_smoke(monkeypatch, tmp_path):
    """channels_last and compile modes (compiled by dynamo's eager backend here: inductor takes minutes on the CPU)."""
    monkeypatch.setattr("texforce.bases.loading.COMPILE_BACKEND", "eager")
    module = importlib.import_module("benchmarks.speed")
    figures = module.main(["--smoke", "--modes", "channels_last,compile", "--json", str(tmp_path / "f.jsonl")])
    options = {f["mode"]: f["options"] for f in figures}
    assert options["channels_last"]["channels_last"] and options["compile"]["compile"]
    compiled = {f.get("phase", f["figure"]): f["value"] for f in figures if f["mode"] == "compile"}
    assert is_figure(compiled["sampling"]) and is_figure(compiled["ppo_update"])
    assert compiled["compiled_unet_relative_difference"] < 1e-5
    assert len((tmp_path / "f.jsonl").read_text().splitlines()) == len(figures)


def test_world_speed_smoke():
    module, threads = importlib.import_module("benchmarks.world_speed"), torch.get_num_threads()
    try:
        results = module.main(["--smoke", "--configs", "default", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    (result,) = results
    assert result["config"] == "default" and result["threads"] == 1 and is_figure(result["samples_per_s"])
    assert set(result["share"]) == {"sampling", "decode", "reward", "update", "other"}
    assert abs(sum(result["share"].values()) - 1) < 0.01
    assert all(is_figure(v) for v in result["seconds_per_epoch"].values())


def test_default_budget_smoke(tmp_path):
    module = importlib.import_module("benchmarks.default_budget")
    (result,) = module.main(["--smoke", "--json", str(tmp_path / "b.jsonl")])
    assert result["config"] == "default" and is_figure(result["wall_seconds"]) and is_figure(result["peak_memory_mb"])
    assert result["within"] == (result["wall_seconds"] <= 300 and result["peak_memory_mb"] <= 2048)
    assert json.loads((tmp_path / "b.jsonl").read_text()) == result


def test_render_speed_smoke(tmp_path):
    """texforce's renderer against a stock diffusers call on the same images: the harness runs, no figure asserted."""
    module = importlib.import_module("benchmarks.render_speed")
    result = module.main(["--smoke", "--json", str(tmp_path / "r.jsonl")])
    assert set(result["seconds"]) == {"stock", "texforce"} and result["num_images"] == 4
    assert result["max_abs_difference"] < 1e-4  # the same images
    assert json.loads((tmp_path / "r.jsonl").read_text()) == result
