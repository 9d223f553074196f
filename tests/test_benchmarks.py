"""The speed benchmark's harness runs end to end (tiny model, CPU); its figures are not asserted here."""

import importlib

import pytest


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_speed_benchmark_smoke(arch):
    module = importlib.import_module("benchmarks.speed")
    figures = module.main(["--smoke", "--arch", arch])
    assert {f["model"] for f in figures} == {"texforce/tiny-sdxl-random" if arch == "sdxl" else "texforce/tiny-random"}
    assert {(f["mode"], f["figure"]) for f in figures} >= {("reference", "sampling"), ("texforce", "ppo_update")}
    assert all(f["value"] > 0 for f in figures if f["figure"] != "peak_memory")
    assert all("ratio_to_reference" in f for f in figures if f["mode"] == "texforce" and f["value"])
