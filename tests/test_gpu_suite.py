"""`python -m benchmarks.gpu_suite`: the planner's choices, the stage time limits, and the whole command on the tiny
model on the CPU (speed, discovery, calibration, pretraining pool, an experiment, results.json and the pages)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch

from benchmarks import gpu_suite
from benchmarks.gpu_pages import DOCS_BEGIN, DOCS_END, markdown_tables, update_docs
from benchmarks.gpu_plan import SAFETY, Shape, Throughput, Work, plan, throughput
from benchmarks.gpu_stages import ROOT, Stage
from texforce.bases.meta import build_meta_pipeline, build_on_device
from texforce.errors import TexforceError

SINGLE = Throughput(1, 10.0, 0.002)
POOL = Throughput(4, 15.0, 0.004)  # 4 at once: 1,000 samples/s together against 500 alone
WORK = {
    "claims": Work(arms=[("world_text", ()), ("world_unet", ())], setups=[5, 5]),
    "main": Work(serial_runs=1, setups=[2]),
}


def _total(chosen) -> float:
    return sum(chosen.predicted.values())


def test_the_target_when_it_fits_with_the_faster_pool():
    chosen = plan(Shape(), WORK, ["main", "claims"], 10_000, 3, SINGLE, POOL, 1.0)
    assert (chosen.epochs, chosen.seeds, chosen.workers, chosen.experiments) == (25, 3, 4, ["main", "claims"])
    assert chosen.notes == [] and _total(chosen) * SAFETY <= 10_000
    # 6 arm-seeds on 4 processes: 2 waves of 15 s + 25,600 × 4 ms
    assert chosen.predicted["pretrain"] == pytest.approx(2 * (15 + 25_600 * 0.004))
    # 3 seeds: 2 × (1 + 4 × 3) configurations of 1 s; 1 + 1 × 3, and its run 3 times (with its own evaluation)
    assert chosen.predicted["claims"] == pytest.approx(2 * (1 + 4 * 3))
    assert chosen.predicted["main"] == pytest.approx(1 + 1 * 3 + 3 * (10 + 25_600 * 0.002 + 4))


@pytest.mark.parametrize(
    "seconds, epochs, seeds, experiments, note",
    [
        (400, range(12, 25), 3, ["main", "claims"], "samples per arm"),  # fewer epochs first
        (250, range(12, 26), 3, ["claims"], "not run, no time: main"),  # then what trains its own runs
        (150, range(12, 26), 2, ["claims"], "2 training seeds instead of 3"),  # then seeds
        (90, range(12, 26), 1, ["claims"], "1 training seed instead of 3"),  # then 1 seed
    ],
)
def test_it_degrades_epochs_then_own_runs_then_seeds(seconds, epochs, seeds, experiments, note):
    chosen = plan(Shape(), WORK, ["main", "claims"], seconds, 3, SINGLE, POOL, 1.0)
    assert chosen.epochs in epochs and (chosen.seeds, chosen.experiments) == (seeds, experiments)
    assert any(note in line for line in chosen.notes), chosen.notes
    assert _total(chosen) * SAFETY <= seconds


def test_shared_arms_count_once_and_experiments_are_dropped_from_the_end():
    shared = {"first": WORK["claims"], "again": WORK["claims"]}
    assert plan(Shape(), shared, ["first", "again"], 150, 3, SINGLE, POOL, 1.0).experiments == ["first", "again"]
    work = {"first": WORK["claims"], "second": Work(arms=[("world_joint", ())], setups=[5])}
    chosen = plan(Shape(), work, ["first", "second"], 150, 3, SINGLE, POOL, 1.0)
    assert (chosen.seeds, chosen.experiments) == (2, ["first"]) and "not run, no time: second" in chosen.notes


def test_nothing_fits_and_an_experiment_that_failed_discovery_is_left_out():
    work = {**WORK, "broken": Work(error="TexforceError: boom")}
    assert plan(Shape(), work, ["broken", "claims"], 10_000, 3, SINGLE, None, 1.0).experiments == ["claims"]
    empty = plan(Shape(), WORK, ["claims", "main"], 5, 3, SINGLE, POOL, 1.0)
    assert (empty.experiments, empty.epochs) == ([], 0) and "nothing fits" in empty.notes[0]


def test_throughput_from_a_runs_metrics(tmp_path):
    epochs = [{"epoch": 1, "time/sample_s": 3.0, "time/train_s": 2.0}, {"epoch": 2, "time/sample_s": 1.0}]
    epochs.append({"epoch": 3, "time/sample_s": 1.5, "time/reward_s": 0.5, "ppo/loss": 7.0})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    measured = throughput([(12.0, tmp_path)], samples_per_epoch=100)
    assert measured == Throughput(1, 12.0 - 8.0, 1.5 / 100)  # the median of the epochs after the first


def test_a_stage_and_what_it_started_are_killed_at_its_limit(tmp_path):
    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
    stage = Stage("sleepy", [sys.executable, "-c", script + " print('started', flush=True); time.sleep(60)"], tmp_path)
    record = stage.wait(time.time() + 1.5)
    assert record["status"] == "stopped at its time limit"
    assert "started" in (tmp_path / "sleepy.log").read_text()
    for _ in range(50):  # SIGKILL reaches the orphaned child asynchronously
        survivors = subprocess.run(["pgrep", "-s", str(stage.process.pid)], capture_output=True, text=True).stdout
        if not survivors.strip():
            break
        time.sleep(0.1)
    assert survivors.strip() == "", "the stage's child outlived it"


def test_markdown_tables_with_their_sections():
    page = "# Title\n\n| | |\n|---|---|\n| a | 1 |\n\n## Verdicts\n\ntext\n"
    page += "| x | y |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |\n"
    tables = markdown_tables(page)
    assert [t["section"] for t in tables] == ["Title", "Verdicts"]
    assert tables[1] == {"section": "Verdicts", "columns": ["x", "y"], "rows": [["1", "2"], ["3", "4"]]}


def test_the_whole_command_on_the_tiny_model(tmp_path):
    """Every stage for real, at the tiny shape, two seeds and two concurrent processes: the speed figures, the
    calibration, the plan, `hacking` trained by the pool and judged, its page with the budget, results.json."""
    out = tmp_path / "suite"
    argv = ["--smoke", "--seeds", "2", "--workers", "2", "--experiments", "hacking", "--no-compile", "--flow"]
    record = gpu_suite.main([*argv, "--deadline", "420", "-o", str(out)])
    saved = json.loads((out / "results.json").read_text())
    assert saved["wall_seconds"] == record["wall_seconds"]
    assert {s: r["status"] for s, r in saved["stages"].items()} == dict.fromkeys(
        ["speed", "discover", "speed_sd35-medium", "speed_flux-dev", "calibrate", "experiments"], "done"
    )
    speed = {(f["mode"], f["figure"]) for f in saved["speed"]}
    assert {("reference", "sampling"), ("texforce", "ppo_update"), ("channels_last", "sampling")} <= speed
    assert ("backprop", "backprop_memory") in speed
    flow = {(f["model"], f["mode"], f["figure"]) for f in saved["speed"] if f["model"] != gpu_suite.SMOKE_MODEL}
    for model in ("texforce/tiny-sd3-random", "texforce/tiny-flux-random"):  # --flow's rows, on the tiny models
        assert {(model, "texforce", "sampling"), (model, "texforce", "ppo_update")} <= flow
        assert (model, "backprop", "backprop_memory") in flow
    assert "`texforce/tiny-flux-random`" in (out / "suite.md").read_text()
    assert {"single", "concurrent"} <= saved["calibration"].keys()
    assert (saved["plan"]["seeds"], saved["plan"]["epochs"], saved["plan"]["experiments"]) == (2, 2, ["hacking"])
    hacking = saved["experiments"]["hacking"]
    assert hacking["status"] == "done" and hacking["trained"] == 0, "the pool trains the arms, the experiment reuses"
    arm = ["world_hacking", ["reward=world_preference:1.0+world_alignment:0.0"]]
    assert hacking["discovery"]["arms"] == [arm]
    sections = {"Per epoch, training samples", "Held-out prompts, after training"}
    assert {t["section"] for t in hacking["tables"]} >= sections
    assert {e["setup"] for e in hacking["evaluations"]["eval_heldout"]} == {"base", "text/s0", "text/s1"}
    page = (out / "hacking" / "results.md").read_text()
    assert "| budget | `gpu` |" in page and "**GPU suite budget.** 2 training seeds × 8 samples per arm" in page
    assert "[hacking](hacking/results.md)" in (out / "suite.md").read_text()
    assert "[hacking](hacking/results.md)" in (out / "experiments.md").read_text()
    page = tmp_path / "gpu-suite.md"  # what gpu_check.sh then writes into docs/performance/gpu-suite.md
    page.write_text((ROOT / "docs" / "performance" / "gpu-suite.md").read_text())
    for _ in range(2):  # replaced between its markers, never repeated
        update_docs(page, saved)
    text = page.read_text()
    assert text.count(DOCS_BEGIN) == text.count(DOCS_END) == 1 and text.index(DOCS_BEGIN) < text.index(DOCS_END)
    section = text[text.index(DOCS_BEGIN) : text.index(DOCS_END)]
    assert "| speed_flux-dev | done |" in section and "`texforce/tiny-flux-random`" in section
    assert text.startswith("# On a GPU") and "| hacking | done |" in section


def test_a_deadline_too_short_for_anything(tmp_path):
    record = gpu_suite.main(["--smoke", "--deadline", "4", "-o", str(tmp_path / "suite")])
    assert record["stages"]["discover"]["status"] == "stopped at its time limit"
    assert record["stages"]["compile"]["status"].startswith("skipped")
    assert {e["status"] for e in record["experiments"].values()} == {"not run"}
    assert "| discover | stopped at its time limit |" in (tmp_path / "suite" / "suite.md").read_text()


def test_the_prepared_gpu_check_in_its_dry_run():
    """benchmarks/gpu_check.sh: the suite with the flow rows inside 10 minutes, then its figures into the docs page."""
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    suite, pages = [line for line in result.stdout.splitlines() if line.startswith("+ ")][-2:]
    assert "-m benchmarks.gpu_suite --flow" in suite
    assert int(suite.split("--deadline ")[1].split()[0]) <= 540  # the rest of 600 s: install, start-up, copies
    assert pages.endswith("--docs docs/performance/gpu-suite.md")


def test_a_random_built_in_is_made_on_its_device_in_its_dtype():
    """What --flow does on the GPU (FLUX.1 in bf16, no fp32 copy on the CPU), on the tiny FLUX and the CPU."""
    pipe = build_on_device("texforce/tiny-flux-random", "cpu", torch.bfloat16)
    planned, _ = build_meta_pipeline("texforce/tiny-flux-random")
    for name in ("transformer", "text_encoder", "text_encoder_2", "vae"):
        module, meta = getattr(pipe, name), getattr(planned, name)
        floats = [t for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()]
        assert {t.dtype for t in floats} == {torch.bfloat16} and all(torch.isfinite(t).all() for t in floats)
        assert sum(p.numel() for p in module.parameters()) == sum(p.numel() for p in meta.parameters())
    positions = next(b for n, b in pipe.text_encoder.named_buffers() if n.endswith("position_ids"))
    assert torch.equal(positions[0], torch.arange(77))  # a buffer its constructor computes
    assert torch.get_default_dtype() == torch.float32
    with pytest.raises(TexforceError, match="not a random built-in"):
        build_on_device("black-forest-labs/FLUX.1-dev", "cpu", torch.bfloat16)
