"""The speed benchmark's harness runs end to end (tiny model, CPU); its figures are not asserted here."""

import importlib


def test_speed_benchmark_smoke():
    module = importlib.import_module("benchmarks.speed")
    figures = module.main(["--smoke"])
    assert {(f["mode"], f["figure"]) for f in figures} >= {("reference", "sampling"), ("texforce", "ppo_update")}
    assert all(f["value"] > 0 for f in figures if f["figure"] != "peak_memory")
    assert all("ratio_to_reference" in f for f in figures if f["mode"] == "texforce" and f["value"])
