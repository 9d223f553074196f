"""The speed benchmark's harness runs end to end (tiny model, CPU); its figures are not asserted here."""

import importlib.util
from pathlib import Path


def test_speed_benchmark_smoke():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "speed.py"
    spec = importlib.util.spec_from_file_location("speed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    figures = module.main(["--smoke"])
    assert {(f["mode"], f["figure"]) for f in figures} >= {("reference", "sampling"), ("texforce", "ppo_update")}
    assert all(f["value"] > 0 for f in figures if f["figure"] != "peak_memory")
    assert all("ratio_to_reference" in f for f in figures if f["mode"] == "texforce" and f["value"])
