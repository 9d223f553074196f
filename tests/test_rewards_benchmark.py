"""The reward throughput benchmark's harness runs end to end on tiny models; its figures are not asserted."""

import importlib
import importlib.util
import math


def test_reward_benchmark_smoke() -> None:
    module = importlib.import_module("benchmarks.rewards")
    names = ["clipscore", "aesthetic", "pickscore", "hpsv2", "imagereward"]
    if importlib.util.find_spec("ai_edge_litert") is not None:  # the texforce[detectors] extra
        names += ["hand", "face"]
    figures = module.main(["--smoke", "--rewards", *names])
    assert [f["reward"] for f in figures] == names
    assert all(math.isfinite(f["images_per_s"]) and f["dtype"] == "float32" for f in figures)  # present, any size
