"""`texforce experiment`: every experiment end to end on the tiny budget and the tiny random model."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
import torch

from texforce.adapters.conversion import read_adapters
from texforce.cli.main import main
from texforce.experiments import BUDGETS, Settings, harness, page
from texforce.experiments.harness import DeadlineReached, arm_command, train_arm
from texforce.stats import estimate


@pytest.fixture(scope="module")
def docs(tiny_model_dir, tmp_path_factory):
    """A shared docs folder and runs cache; experiments sharing an arm (methods, curves) train it once."""
    root = tmp_path_factory.mktemp("experiments")
    return root / "docs", root / "runs"


def _run(name, docs, tiny_model_dir, *extra):
    out, runs = docs
    argv = ["experiment", name, "--budget", "tiny", "--model", str(tiny_model_dir), "-o", str(out / name)]
    assert main([*argv, "--runs-dir", str(runs), *extra]) == 0
    text = (out / name / "results.md").read_text()
    assert "| budget | `tiny`" in text and "| machine |" in text and "| wall time |" in text
    return out / name, text


def _rows(text, first_header):
    """The data rows of the markdown table whose header starts with `first_header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


NUMBER = r"-?\d+\.\d{4}( ± \d+\.\d{4})?"


def _verdicts(folder, text, count):
    """The page opens with its claims' verdicts, the same ones its meta.json records."""
    verdicts = json.loads((folder / "meta.json").read_text())["verdicts"]
    assert len(verdicts) == count
    assert text.index("## Verdict\n") < text.index("\n## ", text.index("## Verdict\n") + 1)
    rows = _rows(text, "claim")
    assert [r[0] for r in rows] == [v["claim"] for v in verdicts]
    for row, v in zip(rows, verdicts, strict=True):
        assert v["outcome"] in ("confirmed", "refuted", "undecided") and row[2].startswith(f"**{v['outcome']}**")
    return verdicts


def test_methods(docs, tiny_model_dir):
    folder, text = _run("methods", docs, tiny_model_dir, "--seeds", "2")
    rows = _rows(text, "method")
    assert [r[0].split(" ")[0] for r in rows] == ["base", "text-encoder", "U-Net", "text", "text"]
    assert all(re.fullmatch(NUMBER, r[1]) and re.fullmatch(NUMBER, r[3]) for r in rows)
    assert "±" in rows[1][1] and "±" not in rows[0][1]  # 2 training seeds give an interval; base has none
    verdicts = _verdicts(folder, text, 3)
    assert verdicts[2]["claim"] == "text tuning keeps semantics better than U-Net tuning at equal reward gain"
    assert [c["contrast"] for c in verdicts[1]["contrasts"]] == ["stacked − text", "stacked − U-Net"]
    assert all(c["seeds"] == 2 and c["shares"] is not None for v in verdicts for c in v["contrasts"])
    assert [r[0] for r in _rows(text, "contrast")][:2] == ["text − base", "stacked − text"]
    for name in ("eval_heldout", "eval_single"):
        assert (folder / name / "grid.png").is_file() and (folder / name / "summary.csv").is_file()
    index = (folder.parent / "experiments.md").read_text()
    assert "[methods](methods/results.md)" in index
    # what each seed's verdict needs is recorded beside the page: scores, metrics, and the adapters stacks combine
    runs = folder / "runs"
    assert (runs / "base" / "scores.csv").read_text().startswith("evaluation,prompt,seed,reward,score\n")
    for seed in (0, 1):
        assert "heldout," in (runs / "stacked" / f"s{seed}" / "scores.csv").read_text()
        for arm in ("text", "unet", "joint"):
            assert (runs / arm / f"s{seed}" / "metrics.jsonl").is_file()
        assert (runs / "text" / f"s{seed}" / "adapter.safetensors").is_file()
    assert not (runs / "joint" / "s0" / "adapter.safetensors").exists()


def test_recorded_adapters_are_the_runs_in_fp16(docs):
    recorded = read_adapters(docs[0] / "methods" / "runs" / "unet" / "s1" / "adapter.safetensors")
    trained = read_adapters(docs[1] / "unet_s1" / "lora")
    assert (
        set(recorded.components) == {"unet"}
        and recorded.components["unet"].keys() == trained.components["unet"].keys()
    )
    for path, module in trained.components["unet"].items():
        half = recorded.components["unet"][path]
        assert half.down.dtype == torch.float16 and half.alpha == module.alpha
        assert torch.allclose(half.up.float(), module.up.float(), rtol=1e-3, atol=1e-4)


def test_more_seeds_resume_from_the_committed_records_without_retraining(docs, tiny_model_dir, monkeypatch):
    """methods with 3 seeds after 2: seeds 0 and 1 come from runs/ (training them would fail), seed 2 is trained
    and judged alone (base too is read back), and the page's verdicts pair all three."""
    real = harness.train_arm

    def train_only_new(settings, config, seed, *args, **kwargs):
        assert seed == 2, f"seed {seed} of {config} is committed under runs/ and must not be trained again"
        return real(settings, config, seed, *args, **kwargs)

    monkeypatch.setattr(harness, "train_arm", train_only_new)
    meta_path = docs[0] / "methods" / "meta.json"
    earlier = {k: v for k, v in json.loads(meta_path.read_text()).items() if k != "machines"}  # as before `machines`
    meta_path.write_text(json.dumps({**earlier, "machine": "Machine A"}))
    folder, text = _run("methods", docs, tiny_model_dir, "--seeds", "3")
    assert "| training seeds | 0, 1, 2 (0, 1 read from the committed runs/) |" in text
    here = page.machine()
    assert f"| machine | Machine A (seeds 0–1); {here} (seeds 2) |" in text
    assert json.loads(meta_path.read_text())["machines"] == {"Machine A": [0, 1], here: [2]}
    judged = (folder / "eval_heldout" / "results.csv").read_text()
    assert "text/s2," in judged and "text/s0," not in judged and "\nbase," not in judged
    assert all(c["seeds"] == 3 for v in _verdicts(folder, text, 3) for c in v["contrasts"])
    assert (folder / "runs" / "text" / "s2" / "adapter.safetensors").is_file()


def test_page_only_rewrites_the_page_from_the_records(docs, tiny_model_dir, monkeypatch):
    folder = docs[0] / "methods"
    before = json.loads((folder / "meta.json").read_text())
    seeds_row = next(line for line in (folder / "results.md").read_text().splitlines() if "| training seeds |" in line)
    monkeypatch.setattr(harness, "train_arm", lambda *a, **k: pytest.fail("--page-only must not train"))
    monkeypatch.setattr(harness, "evaluate", lambda *a, **k: pytest.fail("--page-only must not judge"))
    argv = ["experiment", "methods", "--page-only", "--budget", "tiny", "-o", str(folder)]
    assert main(argv) == 0
    text = (folder / "results.md").read_text()
    assert "read from the committed runs/" in seeds_row  # the look before added a seed
    assert "| page | rewritten " in text and f"| machine | {before['machine']} |" in text and seeds_row in text
    after = json.loads((folder / "meta.json").read_text())
    assert after["verdicts"] == before["verdicts"] and after["date"] == before["date"]


def test_page_only_needs_an_experiment_with_records(tmp_path, capsys):
    assert main(["experiment", "efficiency", "--page-only", "-o", str(tmp_path / "efficiency")]) == 2
    assert "efficiency keeps no per-run records" in capsys.readouterr().err


def test_curves_reuse_the_methods_runs(docs, tiny_model_dir):
    metrics = docs[1] / "text_s0" / "metrics.jsonl"
    trained = metrics.stat().st_mtime_ns
    folder, text = _run("curves", docs, tiny_model_dir)
    assert metrics.stat().st_mtime_ns == trained, "the text arm of methods must be reused, not retrained"
    assert (folder / "curve_world_score.svg").read_text().startswith("<svg")
    assert (folder / "curve_jpeg_compressibility.svg").is_file()
    rows = _rows(text, "epoch")
    assert rows[0][0] == "1" and all(re.fullmatch(NUMBER, cell) for cell in rows[0][1:])
    assert "text − U-Net gain, `jpeg_compressibility`" in _verdicts(folder, text, 1)[0]["evidence"]
    assert (folder / "runs" / "unet_jpeg" / "s0" / "metrics.jsonl").is_file()


def test_stacking_on_a_unet_tuned_for_another_objective(docs, tiny_model_dir):
    folder, text = _run("stacking", docs, tiny_model_dir)
    rows = _rows(text, "model")
    assert [r[0].split(" ")[0] for r in rows] == ["base", "text-encoder", "U-Net", "both"]
    assert all(re.fullmatch(NUMBER, cell) for r in rows for cell in r[1:])
    verdict = _verdicts(folder, text, 1)[0]
    assert [c["contrast"] for c in verdict["contrasts"]] == [
        "stacked − base, `world_score`",
        "stacked − text alone, `world_score`",
        "stacked − base, `jpeg_compressibility`",
        "stacked − unet_jpeg alone, `jpeg_compressibility`",
    ]
    assert verdict["outcome"] == "undecided" and "at 1 (cap not reached: budget)" in verdict["reason"]
    scores = (folder / "runs" / "stacked" / "s0" / "scores.csv").read_text()
    assert ",world_score," in scores and ",jpeg_compressibility," in scores
    assert (folder / "runs" / "unet_jpeg" / "s0" / "adapter.safetensors").is_file()


def test_fusion(docs, tiny_model_dir):
    folder, text = _run("fusion", docs, tiny_model_dir)
    rows = _rows(text, "adapter")
    assert [r[0].split(" ")[0] for r in rows] == ["base", "counting", "relations", "fused"]
    assert _verdicts(folder, text, 1)[0]["claim"] == "fused task adapters keep both gains"
    assert (folder / "eval_count" / "grid.png").is_file() and (folder / "eval_relation" / "grid.png").is_file()


def test_hacking(docs, tiny_model_dir):
    folder, text = _run("hacking", docs, tiny_model_dir, "--proxy", "world_clipscore")
    assert len(_rows(text, "epoch")) == 1
    verdict = _verdicts(folder, text, 1)[0]
    assert "reward hacking" in verdict["claim"]
    assert [c["contrast"].split(",")[0] for c in verdict["contrasts"]] == [
        "exact `world_score` held-out",
        "exact `world_score`",
        "learned `world_clipscore`",
    ]
    assert (folder / "curve_proxy.svg").is_file() and (folder / "curve_judge.svg").is_file()
    index = (folder.parent / "experiments.md").read_text()
    assert "[hacking](hacking/results.md)" in index  # the other pages are there when their tests ran first
    assert json.loads((folder / "meta.json").read_text())["budget"] == "tiny"
    s1 = folder / "runs" / "text" / "s1"
    shutil.copytree(folder / "runs" / "text" / "s0", s1)
    (s1 / "metrics.jsonl").unlink()  # a seed judged before per-run records: scores only
    argv = ["experiment", "hacking", "--page-only", "--budget", "tiny", "--proxy", "world_clipscore", "-o"]
    assert main([*argv, str(folder)]) == 0
    text = (folder / "results.md").read_text()
    assert "committed for seeds 0 of 0, 1" in text and len(_rows(text, "epoch")) == 1
    assert len(_verdicts(folder, text, 1)[0]["contrasts"]) == 1  # one seed's curves do not decide


def test_versus_table(docs, tiny_model_dir):
    from texforce.experiments.versus import ROWS, STYLES_JUDGED

    folder, text = _run("versus", docs, tiny_model_dir)
    rows = _rows(text, "model")
    assert [(r[0], r[1]) for r in rows] == [(label, f"`{s}`") for s in STYLES_JUDGED for label in ROWS.values()]
    assert all(re.fullmatch(NUMBER, cell) for r in rows for cell in r[2:5])
    assert rows[0][5:] == ["—", "—"] and re.fullmatch(r"[+-]\d\.\d{4}", rows[len(ROWS)][5])  # tags' own gain
    assert all(re.fullmatch(r"[+-]\d\.\d{4}", cell) for r in rows if r[0] != ROWS["base"] for cell in r[5:])
    _verdicts(folder, text, 7)
    styled = (folder / "eval_styles" / "results.csv").read_text()
    assert ",engineered," in styled and (folder / "eval_styles" / "grid.png").is_file()
    # each row's scores recorded per style, the adapters the stack combines, every trained arm's metrics
    runs = folder / "runs"
    for label in ("base", "ddpo/s0", "stacked/s0"):
        scores = (runs / label / "scores.csv").read_text()
        assert "\nstyles," in scores and "\nstyles:engineered," in scores
    assert all((runs / arm / "s0" / "metrics.jsonl").is_file() for arm in ("ddpo", "backprop", "unet"))
    assert [(runs / arm / "s0" / "adapter.safetensors").is_file() for arm in ("ddpo", "unet", "backprop")] == [
        True,
        True,
        False,
    ]


def test_versus_adds_a_seed_to_its_records_and_rewrites_its_page_from_them(docs, tiny_model_dir, monkeypatch):
    """versus with 2 seeds after 1: seed 0 is read from runs/ (its DDPO arm, trained by `timed_train`, and the
    others by `train_arm`, must not run again); then --page-only gives the same verdicts, training and judging
    nothing."""
    from texforce.experiments import versus

    real_arm, real_timed = harness.train_arm, versus.timed_train

    def only_seed_1(real):
        def train(settings, config, seed, *args, **kwargs):
            assert seed == 1, f"seed {seed} of {config} is committed under runs/ and must not be trained again"
            return real(settings, config, seed, *args, **kwargs)

        return train

    monkeypatch.setattr(harness, "train_arm", only_seed_1(real_arm))
    monkeypatch.setattr(versus, "timed_train", only_seed_1(real_timed))
    folder, text = _run("versus", docs, tiny_model_dir, "--seeds", "2")
    assert "| training seeds | 0, 1 (0 read from the committed runs/) |" in text
    judged = (folder / "eval_styles" / "results.csv").read_text()
    assert "ddpo/s1," in judged and "ddpo/s0," not in judged and "\nbase," not in judged
    before = _verdicts(folder, text, 7)
    assert all(c["seeds"] == 2 for v in before for c in v["contrasts"])
    monkeypatch.setattr(harness, "train_arm", lambda *a, **k: pytest.fail("--page-only must not train"))
    monkeypatch.setattr(versus, "timed_train", lambda *a, **k: pytest.fail("--page-only must not train"))
    monkeypatch.setattr(harness, "evaluate", lambda *a, **k: pytest.fail("--page-only must not judge"))
    assert main(["experiment", "versus", "--page-only", "--budget", "tiny", "-o", str(folder)]) == 0
    assert json.loads((folder / "meta.json").read_text())["verdicts"] == before


def test_scores_are_recorded_per_prompt_style(tmp_path):
    """An evaluation in several styles is recorded as `name` (plain) and `name:style`; judging it again replaces
    every style's rows; a results.csv without a style column (judged before styles) is plain."""
    from texforce.experiments.records import load_records, record_evaluation

    def judged(lines, header="config,style,prompt,seed,reward,score"):
        folder = tmp_path / "out" / "eval_styles"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.csv").write_text("\n".join([header, *lines]) + "\n")

    judged(["base,plain,a cat,1000,world_score,0.5", "base,engineered,a cat,1000,world_score,0.75"])
    scores = load_records(tmp_path / "out").scores["base"]
    assert scores == {("styles", "world_score"): {("a cat", 1000): 0.5},
                      ("styles:engineered", "world_score"): {("a cat", 1000): 0.75}}  # fmt: skip
    judged(["base,a dog,1000,world_score,0.25"], header="config,prompt,seed,reward,score")
    record_evaluation(tmp_path / "out", "styles")
    assert load_records(tmp_path / "out").scores["base"] == {("styles", "world_score"): {("a dog", 1000): 0.25}}


def test_the_engineered_style_is_the_ceilings_choice():
    from texforce.prompts.styles import ENGINEERED_TAGS

    record = json.loads((Path(__file__).parents[1] / "docs" / "world" / "ceiling.json").read_text())
    chosen = record["chosen"]["prompt-engineered"]
    assert (tuple(chosen["tags"]), chosen["position"], chosen["careful"]) == (ENGINEERED_TAGS, "prefix", False)


def test_main_job_per_family(docs, tiny_model_dir):
    _, text = _run("default", docs, tiny_model_dir)
    rows = _rows(text, "family")
    assert [r[0] for r in rows] == [f for f in ("single", "count", "relation", "composition", "all") for _ in "abc"]
    assert {r[1] for r in rows} == {"`world_score`", "`world_alignment`", "`world_quality`"}
    seed_row = _rows(text, "run")[0]
    assert seed_row[0] == "text/s0" and float(seed_row[1]) > 0 and seed_row[3] in ("yes", "**no**")
    folder, again = _run("default", docs, tiny_model_dir)  # run again into its own folder: judged again, not refused
    assert _rows(again, "family") == rows and (folder / "eval_heldout" / "grid.png").is_file()


def test_efficiency_curves(docs, tiny_model_dir):
    """2 epochs with a checkpoint each: every run gives a curve point after epoch 1 and at its end (2 samples each)."""
    out, runs = docs
    argv = ["experiment", "efficiency", "train.num_epochs=2", "--budget", "tiny", "--model", str(tiny_model_dir)]
    assert main([*argv, "-o", str(out / "efficiency"), "--runs-dir", str(runs)]) == 0
    text = (out / "efficiency" / "results.md").read_text()
    assert (runs / "ddpo_curve_s0" / "checkpoints" / "checkpoint_00001").is_dir()
    rows = _rows(text, "samples seen")
    assert [(r[0], r[1]) for r in rows] == [("2", "DDPO"), ("4", "DDPO"), ("2", "backprop"), ("4", "backprop")]
    assert all(re.fullmatch(r"[+-]\d\.\d{3}", r[3]) for r in rows)  # one training seed: one value each
    assert [r[0] for r in _rows(text, "algorithm")] == ["DDPO", "backprop"]
    assert "| DDPO | 0 |" in text and "| backprop | 0 |" in text  # each seed's end of run
    svg = (out / "efficiency" / "curve_efficiency.svg").read_text()
    assert svg.startswith("<svg") and "samples seen" in svg
    assert not (out / "efficiency" / "eval_heldout" / "grid.png").exists()
    summary = (out / "efficiency" / "eval_heldout" / "results.csv").read_text()
    assert "DDPO/s0/2," in summary and "backprop/s0/4," in summary


def test_student_t_interval():
    e = estimate([1.0, 2.0, 3.0])
    assert e.mean == 2.0 and abs(e.ci - 4.303 * 1.0 / 3**0.5) < 1e-9
    assert estimate([5.0]).ci == 0.0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--seeds", "0"], "--seeds must be >= 1, got 0"),
        (["--judge", "no_such_reward"], "unknown reward 'no_such_reward'"),
    ],
)
def test_experiment_bad_input(extra, message, tmp_path, capsys):
    assert main(["experiment", "methods", "--budget", "tiny", "-o", str(tmp_path / "out"), *extra]) == 2
    assert f"texforce experiment: error: {message}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_experiment_refuses_to_replace_a_foreign_folder(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    assert main(["experiment", "fusion", "--budget", "tiny", "-o", str(tmp_path / "mine")]) == 2
    assert "is not an experiment's folder" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_an_interrupted_experiment_leaves_a_folder_the_next_run_takes(tmp_path):
    from texforce.experiments import fresh_folder

    folder = tmp_path / "page"
    (folder / "eval_x").mkdir(parents=True)
    for name in ("results.md", "meta.json", "curve.svg"):
        (folder / name).write_text(name)
    fresh_folder(folder)  # a run starts, then is killed before it writes its page
    assert sorted(p.name for p in folder.iterdir()) == ["eval_x", "meta.json", "results.md"]
    fresh_folder(folder)  # the next run is not refused


def test_an_arm_that_would_end_after_the_deadline_is_not_started(tmp_path):
    settings = Settings(BUDGETS["tiny"], tmp_path / "out", tmp_path / "runs", 1, deadline=time.time() + 5)
    settings.arm_seconds = 60.0
    with pytest.raises(DeadlineReached, match=r"^text_s0 would take about 60 s and end after the deadline"):
        train_arm(settings, "world_text", 0)
    assert not (tmp_path / "runs").exists() and settings.trained == []


def test_arm_command_is_the_arms_training_as_a_process(tmp_path):
    settings = Settings(BUDGETS["tiny"], tmp_path / "out", tmp_path / "runs", 1, model="texforce/tiny-random")
    argv = arm_command(settings, "world_text_clipscore", 2, ["reward=world_clipscore"])
    assert argv[1:5] == ["-m", "texforce", "train", "world_text_clipscore"] and argv[-1] == "--quiet"
    assert argv.index("reward=world_clipscore") < argv.index("seed=2") < argv.index("run_name=text_clipscore_s2")
    assert "model.base=texforce/tiny-random" in argv and "--resume" not in argv


def test_styles_judges_every_style_and_the_ablations(docs, tiny_model_dir):
    from texforce.experiments.styles import ABLATIONS, ARMS, FLOW_ARMS
    from texforce.observe.evaluation import read_rows
    from texforce.prompts.styles import STYLES

    folder, text = _run("styles", docs, tiny_model_dir)
    assert [r[0] for r in _rows(text, "style")] == [f"`{s}`" for s in STYLES]
    assert [r[0] for r in _rows(text, "arm")] == ["default", *ABLATIONS]
    assert len(_rows(text, "adapter")) == 5 * len(ARMS)  # the bars, per adapter
    rows = read_rows(folder / "eval_styles")
    assert {r["style"] for r in rows} == set(STYLES)
    assert {r["config"] for r in rows} == {"base", *(f"{arm}/s0" for arm in ARMS)}
    assert (folder / "eval_grid" / "grid.png").is_file()
    flow = read_rows(folder / "eval_flow_styles")  # the flow adapters, against their own base
    assert {r["config"] for r in flow} == {"base", *(f"{arm}/s0" for arm in FLOW_ARMS)}
    assert {r["style"] for r in flow} == set(STYLES)
    assert "## texforce/world-flow: the same styles" in text
    assert f"| evaluation | `eval_styles` 4 prompts in {len(STYLES)} styles × seeds " in text  # what it rendered


def test_seed_change_pairs_images_and_takes_the_training_seed_as_unit():
    from texforce.experiments.styles import seed_change

    base = {"p": 0.9, "q": 0.1}  # far apart: unpaired, the prompts' spread would swamp the change
    change = {"a/s0": {"p": 0.1, "q": 0.3}, "a/s1": {"p": 0.3, "q": 0.5}}  # seed means 0.2 and 0.4
    rows = [{"config": "base", "style": "engineered", "prompt": p, "seed": 7, "reward": "r", "score": s}
            for p, s in base.items()]  # fmt: skip
    rows += [{"config": label, "style": "engineered", "prompt": p, "seed": 7, "reward": "r", "score": base[p] + d}
             for label, by in change.items() for p, d in by.items()]  # fmt: skip
    e = seed_change(rows, ["a/s0", "a/s1"], "engineered", "r")
    assert e.n == 2 and e.mean == pytest.approx(0.3)
    assert e.ci == pytest.approx(12.706 * 0.1414214 / 2**0.5, rel=1e-5)  # t(1) over the two seed means
    with pytest.raises(KeyError):
        seed_change(rows, ["a/s0"], "plain", "r")  # no such style was judged


def test_a_run_another_process_is_training_is_waited_for_and_reused(tmp_path):
    import subprocess
    import sys

    from texforce.experiments.main_job import timed_train

    settings = Settings(BUDGETS["tiny"], tmp_path / "out", tmp_path / "runs", 1)
    run_dir = settings.runs_dir / "default_s0"
    run_dir.mkdir(parents=True)
    ready = tmp_path / "ready"
    other = (  # a scheduler's trainer: holds the run lock, finishes the run, writes its timing, exits
        "import fcntl, json, pathlib, sys, time\n"
        f"run = pathlib.Path({str(run_dir)!r})\n"
        "handle = open(run / '.lock', 'a+'); fcntl.flock(handle, fcntl.LOCK_EX)\n"
        f"pathlib.Path({str(ready)!r}).touch(); time.sleep(1.5)\n"
        "(run / 'lora').mkdir(); (run / 'timing.json').write_text(json.dumps({'wall_seconds': 7.0}))\n"
    )
    process = subprocess.Popen([sys.executable, "-c", other])
    while not ready.exists():
        time.sleep(0.05)
    assert timed_train(settings, "default", 0) == (run_dir, {"wall_seconds": 7.0})  # not deleted and retrained
    assert process.wait() == 0


def test_accumulate_judges_only_the_seeds_not_recorded(tmp_path, monkeypatch):
    """The resume logic alone, without a model: seeds 0 and 1 are recorded, so only seed 2 is trained and judged,
    into an evaluation folder that a previous run left behind (`evaluate` replaces it: test_main_job_per_family)."""
    settings = Settings(BUDGETS["tiny"], tmp_path / "out", tmp_path / "runs", 3)
    trained, judged = [], []

    def fake_train(settings, config, seed, extra=()):
        trained.append(seed)
        run = tmp_path / "runs" / f"{config}_s{seed}"
        run.mkdir(parents=True, exist_ok=True)
        (run / "metrics.jsonl").write_text('{"reward_mean": 0.5}\n')
        return run

    def fake_evaluate(settings, setups, prompts, rewards, name, config_name):
        folder = settings.output / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        judged.append([s.label for s in setups])
        lines = [f"{s.label},{p},1000,{rewards[0]},{0.5 + 0.01 * len(s.label)}" for s in setups for p in prompts]
        (folder / "results.csv").write_text("\n".join(["config,prompt,seed,reward,score", *lines]) + "\n")

    monkeypatch.setattr(harness, "train_arm", fake_train)
    monkeypatch.setattr(harness, "evaluate", fake_evaluate)
    arms = {"text": ("world_text", ())}

    def setups(seed, runs):
        return [harness.AdapterSetup(f"text/s{seed}")]

    settings.num_seeds = 2
    harness.accumulate(settings, arms, ["text"], {"heldout": ["a", "b"]}, ["world_score"], setups)
    assert trained == [0, 1] and judged == [["base", "text/s0", "text/s1"]]
    settings.num_seeds = 3
    records = harness.accumulate(settings, arms, ["text"], {"heldout": ["a", "b"]}, ["world_score"], setups)
    assert trained == [0, 1, 2] and judged[1] == ["text/s2"] and settings.reused == [0, 1]
    assert records.complete_seeds(["text"], ["heldout"]) == [0, 1, 2] and set(records.metrics("text")) == {0, 1, 2}
    assert records.base("heldout", "world_score").keys() == {("a", 1000), ("b", 1000)}


def test_a_page_names_the_seeds_recorded_without_metrics_or_adapters(tmp_path):
    """Seeds judged before per-run records existed have scores only; the page says which, on every rewrite."""
    from texforce.experiments.claims import records_note
    from texforce.experiments.records import load_records

    for label in ("text/s0", "text/s1", "stacked/s0"):
        folder = tmp_path / "runs" / label
        folder.mkdir(parents=True)
        (folder / "scores.csv").write_text("evaluation,prompt,seed,reward,score\nheldout,a cat,1000,world_score,0.5\n")
    (tmp_path / "runs" / "text" / "s1" / "metrics.jsonl").write_text('{"reward_mean": 0.5}\n')
    records = load_records(tmp_path)
    assert records_note(records, ["text"]).startswith("\nSeeds 0: per-image scores only")
    (tmp_path / "runs" / "text" / "s0" / "metrics.jsonl").write_text('{"reward_mean": 0.5}\n')
    assert records_note(load_records(tmp_path), ["text"]) == ""


def test_each_seed_keeps_the_machine_that_ran_it(tmp_path):
    """A look that adds seeds names the earlier looks' machines for the seeds it read back; a seed no meta.json
    accounts for is "not recorded", never this machine's."""
    assert page.seed_ranges([9, 0, 1, 2, 3, 5, 8]) == "0–3, 5, 8–9"
    here = page.machine()
    assert page.seed_machines(tmp_path, [0, 1], []) == {here: [0, 1]}
    assert page.seed_machines(tmp_path, [0, 1, 2], [0, 1]) == {"not recorded": [0, 1], here: [2]}
    (tmp_path / "meta.json").write_text(json.dumps({"machine": "A", "machines": {"A": [0, 1], "B": [2, 3]}}))
    machines = page.seed_machines(tmp_path, [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4])
    assert machines == {"A": [0, 1], "B": [2, 3], "not recorded": [4], here: [5]}
    described = f"A (seeds 0–1); B (seeds 2–3); not recorded (seeds 4); {here} (seeds 5)"
    assert page.describe_machines(machines) == described
    assert page.describe_machines({"A": [0, 1, 2]}) == "A"
