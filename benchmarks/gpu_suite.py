"""One command for one GPU: the paper-claim experiments at DDPO's budget and the real-SD speed benchmark, sized from
throughput measured at its start and held to a hard wall-clock deadline (README: "On a GPU: the real DDPO budget").

    python -m benchmarks.gpu_suite -o /tmp/gpu_suite               # on the GPU machine: at most 540 s
    python -m benchmarks.gpu_suite --smoke --seeds 2 --workers 2 --experiments hacking -o /tmp/suite   # CPU, tiny

Stages, each a child process group killed at its time limit, so that the whole never passes --deadline:
  speed        benchmarks.speed on SD-1.5 (512², 50 DDIM steps, CFG, random weights): the official pattern,
               texforce, texforce with channels-last, direct backprop's memory per image; beside it, on the CPU:
  discover     every experiment at the tiny budget on the tiny model: the arms it trains, the runs it trains in
               its own processes, the configurations each of its evaluations renders
  calibrate    `texforce train world_text` at the suite's batch shape, alone, then as --workers processes at once:
               each process's start-up seconds and steady seconds per sample
  experiments  times one held-out evaluation; plans the largest budget that fits (`plan`: the target is --seeds
               training seeds × --target-epochs × --samples-per-epoch samples per arm); trains every arm-seed
               ahead in a pool of concurrent `texforce train` processes (none started that would end past its
               deadline); then runs each experiment, which reuses those runs, judges them and writes its page
  compile      benchmarks.speed's compile mode (torch.compile'd U-Net, its compile seconds), if the time left allows
Writes OUTPUT/results.json (every figure: speed, calibration, plan, each experiment's tables and evaluation
summaries), OUTPUT/suite.md, OUTPUT/NAME/results.md per experiment (each stating the budget it got),
OUTPUT/experiments.md and OUTPUT/logs/. Training runs go to OUTPUT_runs (--runs-dir).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from texforce.evaluation import AdapterSetup
from texforce.experiments import BUDGETS, EXPERIMENTS, run_experiment
from texforce.experiments.harness import (
    Budget,
    DeadlineReached,
    Settings,
    arm_command,
    arm_config,
    arm_run,
    evaluate,
    machine,
)
from texforce.experiments.page import table
from texforce.prompts import load_prompt_set

ROOT = Path(__file__).resolve().parents[1]
FINAL_RESERVE = 10.0  # seconds kept at the end: collecting the figures, results.json and the pages
SAFETY = 1.15  # the plan fits its predicted seconds times this into the time left
RUN_EVAL_SETUPS = 4  # a run's own before/after evaluation renders about as much as 4 configurations of `evaluate`
COMPILE_MIN_SECONDS = 150.0  # the compile stage starts only with this much left (SD-1.5's U-Net compiles for minutes)
CALIBRATION_SECONDS = 150.0  # time limit of the calibration runs
CALIBRATION_CONFIG = "world_text"
SPEED_MODES = "reference,texforce,channels_last,backprop"


@dataclass(frozen=True)
class Shape:
    """Every arm's batch shape and the judging budget: what the plan keeps while it sizes epochs and seeds."""

    samples_per_epoch: int = 1024
    sample_batch: int = 512
    samples_per_step: int = 256
    micro_batch: int = 256
    target_epochs: int = 25  # 25,600 samples per arm: DDPO's budget
    min_epochs: int = 12  # fewer epochs than the target down to this (about half), then other things go
    eval_prompts: int = 32
    eval_seeds: int = 4
    eval_steps: int = 20
    extra: tuple[str, ...] = ()  # overrides of every run (the smoke shape's sampling steps)

    def budget(self, epochs: int, seeds: int) -> Budget:
        """The `gpu` budget: the arms' configs with this shape and `epochs`, judged with this evaluation."""
        overrides = (
            f"sample.batch_size_per_device={self.sample_batch}",
            f"sample.num_batches_per_epoch={self.samples_per_epoch // self.sample_batch}",
            f"train.batch_size_per_device={self.micro_batch}",
            f"train.gradient_accumulation_steps={self.samples_per_step // self.micro_batch}",
            f"train.num_epochs={epochs}",
            f"eval.num_seeds={self.eval_seeds}",
            f"checkpoint_every={epochs}",
            *self.extra,
        )
        return Budget("gpu", overrides, seeds, self.eval_prompts, self.eval_seeds, self.eval_steps)


SMOKE = Shape(
    samples_per_epoch=4, sample_batch=2, samples_per_step=2, micro_batch=2, target_epochs=2, min_epochs=1,
    eval_prompts=2, eval_seeds=1, eval_steps=2, extra=("sample.num_steps=2", "backprop.num_grad_steps=2"),
)  # fmt: skip
SMOKE_MODEL = "texforce/tiny-random"


@dataclass(frozen=True)
class Throughput:
    """`texforce train` at the suite's shape, `processes` at once: each one's start-up, steady seconds per sample."""

    processes: int
    startup_seconds: float
    seconds_per_sample: float

    def run_seconds(self, samples: int) -> float:
        return self.startup_seconds + samples * self.seconds_per_sample


@dataclass
class Work:
    """One experiment, from its discovery run with one training seed: the arms `train_arm` trained (config, extra),
    the runs it trained in its own processes (one seed after another), each evaluation's configurations."""

    arms: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    serial_runs: int = 0
    setups: list[int] = field(default_factory=list)
    error: str | None = None

    @classmethod
    def from_json(cls, data: dict) -> Work:
        return cls(**{**data, "arms": [(config, tuple(extra)) for config, extra in data["arms"]]})


@dataclass
class Plan:
    """The budget the experiments got, and what it was expected to cost."""

    epochs: int
    seeds: int
    workers: int
    experiments: list[str]
    job_seconds: float  # one arm-seed in the pool
    run_seconds: float  # one arm-seed alone (a run of its own, or `train_arm` in the experiment's process)
    eval_seconds: float  # one configuration of one evaluation
    predicted: dict[str, float]  # pretrain, then each experiment's own seconds
    notes: list[str]


def evaluation_seconds(w: Work, seeds: int, eval_seconds: float) -> float:
    """An experiment's evaluations: each renders its configurations (one per seed and kind, plus the base)."""
    return sum(1 + (count - 1) * seeds for count in w.setups) * eval_seconds


def pooled_arms(work: dict[str, Work], names: list[str]) -> list[tuple[str, tuple[str, ...]]]:
    """The arms of these experiments, each once (`methods` and `curves` share two)."""
    return list(dict.fromkeys(arm for name in names for arm in work[name].arms))


def predict(
    shape: Shape,
    work: dict[str, Work],
    names: list[str],
    epochs: int,
    seeds: int,
    pool: Throughput,
    single: Throughput,
    eval_seconds: float,
) -> dict[str, float]:
    """Seconds of the pretraining pool (all arm-seeds, `pool.processes` at a time) and of each experiment afterwards
    (its evaluations, and its runs in their own processes, one after another, each with its own evaluation)."""
    samples = epochs * shape.samples_per_epoch
    jobs = seeds * len(pooled_arms(work, names))
    predicted = {"pretrain": math.ceil(jobs / pool.processes) * pool.run_seconds(samples)}
    for name in names:
        w = work[name]
        runs = w.serial_runs * seeds * (single.run_seconds(samples) + RUN_EVAL_SETUPS * eval_seconds)
        predicted[name] = evaluation_seconds(w, seeds, eval_seconds) + runs
    return predicted


def plan(
    shape: Shape,
    work: dict[str, Work],
    names: list[str],
    seconds: float,
    seeds: int,
    single: Throughput,
    concurrent: Throughput | None,
    eval_seconds: float,
) -> Plan:
    """The largest budget whose predicted seconds × SAFETY fit `seconds`, with the faster of one process and the
    concurrent pool. Given up in this order: epochs (down to `shape.min_epochs`); the experiments that train their
    own runs one after another (they cannot use the pool); then 2 seeds; experiments from the end; 1 seed."""
    names = [name for name in names if work[name].error is None]
    pools = [single] + ([concurrent] if concurrent else [])
    pooled = [name for name in names if not work[name].serial_runs] or names
    candidates = [(seeds, names), (seeds, pooled)]
    for count in (min(seeds, 2), 1):
        candidates += [(count, pooled[:k]) for k in range(len(pooled), 0, -1)]
    for count, chosen in candidates:
        for epochs in range(shape.target_epochs, shape.min_epochs - 1, -1):
            options = [(predict(shape, work, chosen, epochs, count, p, single, eval_seconds), p) for p in pools]
            predicted, pool = min(options, key=lambda option: sum(option[0].values()))
            if sum(predicted.values()) * SAFETY <= seconds:
                samples = epochs * shape.samples_per_epoch
                return Plan(
                    epochs, count, pool.processes, chosen, pool.run_seconds(samples), single.run_seconds(samples),
                    eval_seconds, predicted, degradations(shape, names, epochs, seeds, count, chosen),
                )  # fmt: skip
    note = f"nothing fits {seconds:.0f} s, not even 1 seed × {shape.min_epochs} epochs of one experiment"
    return Plan(0, 0, 1, [], 0.0, 0.0, eval_seconds, {}, [note])


def degradations(shape: Shape, names: list[str], epochs: int, seeds: int, count: int, chosen: list[str]) -> list[str]:
    """What the plan gave up against the target, in words."""
    notes = []
    if epochs < shape.target_epochs:
        target, got = shape.target_epochs * shape.samples_per_epoch, epochs * shape.samples_per_epoch
        notes.append(f"samples per arm {got:,} instead of {target:,} ({epochs} of {shape.target_epochs} epochs)")
    if count < seeds:
        notes.append(f"{count} training seed{'s' * (count > 1)} instead of {seeds}")
    if dropped := [name for name in names if name not in chosen]:
        notes.append(f"not run, no time: {', '.join(dropped)}")
    return notes


def throughput(runs: list[tuple[float, Path]], samples_per_epoch: int) -> Throughput:
    """From (wall seconds, run folder) of processes run together: mean start-up (wall minus the epochs' phase seconds)
    and mean steady seconds per sample (the median epoch after the first, which warms up)."""
    startups, steady = [], []
    for wall, run_dir in runs:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        epochs = [sum(v for k, v in json.loads(line).items() if k.startswith("time/")) for line in lines if line]
        startups.append(wall - sum(epochs))
        steady.append(statistics.median(epochs[1:] or epochs))
    return Throughput(len(runs), statistics.mean(startups), statistics.mean(steady) / samples_per_epoch)


class Stage:
    """A child process in its own process group, output to a log; `wait` kills the whole group at its time limit."""

    def __init__(self, name: str, argv: list[str], logs: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.log, self.started = name, logs / f"{name}.log", time.time()
        with open(self.log, "w") as handle:
            self.process = subprocess.Popen(
                argv, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True
            )

    def wait(self, until: float) -> dict:
        """Wait for the process until the wall clock reaches `until`, then kill its group (and anything it left
        running); its status and seconds."""
        try:
            code = self.process.wait(timeout=max(0.0, until - time.time()))
        except subprocess.TimeoutExpired:
            code = None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        status = "done" if code == 0 else "stopped at its time limit" if code is None else f"failed (exit {code})"
        return {"status": status, "seconds": round(time.time() - self.started, 1), "log": f"logs/{self.log.name}"}


def json_lines(path: Path) -> list[dict]:
    """The JSON objects among a log's lines (a benchmark prints one per figure; libraries print other lines)."""
    objects, lines = [], path.read_text().splitlines() if path.is_file() else []
    for line in lines:
        if line.startswith("{") and line.endswith("}"):
            with contextlib.suppress(json.JSONDecodeError):
                objects.append(json.loads(line))
    return objects


def markdown_tables(text: str) -> list[dict]:
    """Every table of a generated page, with the heading above it: columns and rows as text."""
    tables, section, lines = [], "", text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        starts = line.startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---")
        if starts and (i == 0 or not lines[i - 1].startswith("|")):
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                rows.append([cell.strip() for cell in row.strip().strip("|").split("|")])
            tables.append(
                {"section": section, "columns": [c.strip() for c in line.strip("|").split("|")], "rows": rows}
            )
    return tables


# ---------------------------------------------------------------------------------------------- stages in children
def discover_stage(spec: dict) -> None:
    """Every experiment at the tiny budget on the tiny model, on the CPU: what each trains and evaluates."""
    torch.set_num_threads(2)  # the speed benchmark runs beside this on the GPU
    folder, work = Path(spec["folder"]), {}
    for name in spec["names"]:
        runs = folder / "runs"
        before = {p.parent.name for p in runs.glob("*/config.yaml")}
        settings = Settings(
            BUDGETS["tiny"],
            folder / "docs" / name,
            runs,
            1,
            model=spec["model"],
            overrides=("model.device=cpu",),
            judge=spec["judge"],
            proxy=spec["proxy"],
        )
        entry = Work()
        try:
            run_experiment(name, settings)
        except Exception as error:  # an experiment that fails here is left out of the plan, with its error
            traceback.print_exc()
            entry.error = f"{type(error).__name__}: {error}".splitlines()[0]
        arms = {arm_run(settings, *arm)[1].name for arm in settings.arms}
        created = {p.parent.name for p in runs.glob("*/config.yaml")} - before
        entry.arms = [(config, extra) for config, _, extra in settings.arms]
        entry.serial_runs, entry.setups = len(created - arms), settings.evaluated
        work[name] = asdict(entry)
        print(json.dumps({name: work[name]}), flush=True)
    Path(spec["result"]).write_text(json.dumps(work, indent=2))


def experiments_stage(spec: dict) -> None:
    """Time one evaluation, plan, pretrain every arm-seed in a pool, then run the experiments (progress.jsonl)."""
    shape, hard = Shape(**{**spec["shape"], "extra": tuple(spec["shape"]["extra"])}), spec["deadline"]
    work = {name: Work.from_json(w) for name, w in spec["work"].items()}
    output, runs = Path(spec["output"]), Path(spec["runs"])

    def settings_for(name: str, budget: Budget, seeds: int, folder: Path = output) -> Settings:
        return Settings(
            budget,
            folder / name,
            runs,
            seeds,
            model=spec["model"],
            overrides=tuple(spec["overrides"]),
            judge=spec["judge"],
            proxy=spec["proxy"],
            command=spec["command"],
        )

    probe = settings_for("probe", shape.budget(1, 1), 1, runs)
    prompts = load_prompt_set(arm_config(probe, CALIBRATION_CONFIG).prompts.train).eval
    seconds = []
    for attempt in range(2):  # the first pays for loading and warm-up; the second is what a configuration costs
        started = time.time()
        evaluate(probe, [AdapterSetup("base")], prompts, [spec["judge"]], f"eval_{attempt}")
        seconds.append(time.time() - started)
    single = Throughput(**spec["single"])
    concurrent = Throughput(**spec["concurrent"]) if spec["concurrent"] else None
    left = hard - time.time() - FINAL_RESERVE
    chosen = plan(shape, work, spec["names"], left, spec["seeds"], single, concurrent, seconds[1])
    Path(spec["plan"]).write_text(json.dumps(asdict(chosen), indent=2))
    print(json.dumps({"plan": asdict(chosen)}), flush=True)
    budget = shape.budget(chosen.epochs, chosen.seeds)
    after = sum(v for k, v in chosen.predicted.items() if k != "pretrain")
    jobs = [
        (config, seed, extra)
        for config, extra in pooled_arms(work, chosen.experiments)
        for seed in range(chosen.seeds)
    ]
    pretrain(settings_for("pool", budget, chosen.seeds), jobs, chosen, hard - FINAL_RESERVE - after)
    for name in sorted(chosen.experiments, key=lambda n: work[n].serial_runs > 0):  # own runs last: no arm checks
        settings = settings_for(name, budget, chosen.seeds)
        settings.arm_seconds = chosen.run_seconds
        settings.deadline = hard - FINAL_RESERVE - evaluation_seconds(work[name], chosen.seeds, chosen.eval_seconds)
        started, record = time.time(), {"experiment": name}
        try:
            if work[name].serial_runs and time.time() + chosen.predicted[name] > hard - FINAL_RESERVE:
                expected = chosen.predicted[name]
                raise DeadlineReached(f"its own runs and evaluations take about {expected:.0f} s; not started")
            run_experiment(name, settings)
            record["status"] = "done"
        except DeadlineReached as error:
            shutil.rmtree(settings.output, ignore_errors=True)
            record.update(status="skipped: deadline", message=str(error))
        except Exception as error:  # recorded and reported; the next experiment still runs
            traceback.print_exc()
            shutil.rmtree(settings.output, ignore_errors=True)
            record.update(status="failed", message=f"{type(error).__name__}: {error}".splitlines()[0])
        record.update(seconds=round(time.time() - started, 1), phases=settings.seconds, trained=len(settings.trained))
        with open(spec["progress"], "a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)


def pretrain(settings: Settings, jobs: list[tuple[str, int, tuple[str, ...]]], chosen: Plan, deadline: float) -> None:
    """Train `jobs` (config, seed, extra) as `texforce train` processes, `chosen.workers` at a time, in order; a job
    expected to end after `deadline` is not started (its experiment then meets it, with its own deadline check).
    Prints one JSON line per job."""
    env, started = shared_cores(dict(os.environ), chosen.workers), time.time()
    waiting, running = list(jobs), []
    while waiting or running:
        for job in [job for job in running if job[1].poll() is not None]:
            running.remove(job)
            status = "done" if job[1].returncode == 0 else f"failed (exit {job[1].returncode})"
            print(json.dumps({"pretrain": job[0], "status": status, "seconds": round(time.time() - job[2], 1)}))
        while waiting and len(running) < chosen.workers:
            config, seed, extra = waiting.pop(0)
            _, run_dir = arm_run(settings, config, seed, extra)
            if time.time() + chosen.job_seconds > deadline:
                print(json.dumps({"pretrain": run_dir.name, "status": "not started: deadline"}))
                continue
            with open(run_dir.parent / f"{run_dir.name}.log", "w") as log:
                argv = arm_command(settings, config, seed, extra)
                process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
            running.append((run_dir.name, process, time.time()))
        sys.stdout.flush()
        time.sleep(0.2)
    print(json.dumps({"pretrain": "all", "status": "done", "seconds": round(time.time() - started, 1)}), flush=True)


def shared_cores(env: dict[str, str], processes: int) -> dict[str, str]:
    """`env` for one of `processes` training processes at once: an equal share of the cores for its CPU threads
    (unless OMP_NUM_THREADS is set already)."""
    threads = max(1, len(os.sched_getaffinity(0)) // processes)
    return {**env, "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", str(threads))}


# ---------------------------------------------------------------------------------------------- the orchestrator
def fresh(path: Path) -> Path:
    """Empty `path` for this run; a non-empty folder the suite did not make (no `.gpu_suite` in it) is refused."""
    if path.exists() and any(path.iterdir()) and not (path / ".gpu_suite").exists():
        raise SystemExit(f"gpu_suite: {path} exists and was not made by the suite; pick another folder")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    (path / ".gpu_suite").touch()
    return path


def budget_note(record: dict, where: str = " ([suite.md](../suite.md))") -> str:
    """The paragraph each experiment page gets: the budget it ran at, and what was given up to fit."""
    p, shape = record["plan"], Shape(**record["shape"])
    given_up = "; ".join(p["notes"]) or "nothing: the target fitted"
    return (
        f"**GPU suite budget.** {p['seeds']} training seed{'s' * (p['seeds'] > 1)} × "
        f"{p['epochs'] * shape.samples_per_epoch:,} samples per arm ({p['epochs']} epochs × "
        f"{shape.samples_per_epoch:,}), {shape.samples_per_step} samples per optimizer step, judged on "
        f"{shape.eval_prompts} held-out prompts × {shape.eval_seeds} seed{'s' * (shape.eval_seeds > 1)} at "
        f"{shape.eval_steps} DDIM steps; sized from throughput measured at the start of the run{where}. Target "
        f"{record['target_seeds']} seeds × {shape.target_epochs * shape.samples_per_epoch:,} samples per arm; given "
        f"up: {given_up}.\n"
    )


def figures_table(figures: list[dict]) -> str:
    rows = [
        [
            f["mode"],
            f["figure"] + (f" ({f['phase']})" if "phase" in f else ""),
            "—" if f["value"] is None else f"{f['value']:.4g}",
            f["unit"],
            f"{f['ratio_to_reference']:.2f}" if "ratio_to_reference" in f else "",
        ]
        for f in figures
    ]
    return table(["mode", "figure", "value", "unit", "× reference"], rows)


def suite_page(record: dict) -> str:
    """OUTPUT/suite.md: what ran, how the budget was sized, each experiment's status, the speed figures."""
    stages = [[name, r["status"], r["seconds"]] for name, r in record["stages"].items()]
    text = [
        "# GPU suite: the paper's claims at DDPO's budget, and real-SD speed, in one command\n",
        "_Generated by `python -m benchmarks.gpu_suite`; do not edit by hand._\n",
        table(
            ["", ""],
            [
                ["command", f"`{record['command']}`"],
                ["machine", record["machine"]],
                ["date", record["date"]],
                ["deadline", f"{record['deadline_seconds']:.0f} s"],
                ["wall time", f"{record['wall_seconds']:.0f} s"],
            ],
        ),
        "## Stages\n",
        table(["stage", "status", "seconds"], stages),
    ]
    calibration = record.get("calibration", {})
    rows = [
        [
            c["processes"],
            f"{c['startup_seconds']:.1f}",
            f"{1000 * c['seconds_per_sample']:.3f}",
            f"{c['processes'] / c['seconds_per_sample']:.0f}",
        ]
        for c in (calibration.get("single"), calibration.get("concurrent"))
        if c
    ]
    if rows:
        text += [
            f"## Calibration: `texforce train {CALIBRATION_CONFIG}` at the suite's batch shape\n",
            table(["processes at once", "start-up (s)", "ms per sample, each", "samples/s, all"], rows),
        ]
    if plan_record := record.get("plan"):
        text += ["## Budget\n", budget_note(record, "")]
        measured = {"pretrain": record.get("pretrain_seconds")}
        measured |= {name: e.get("seconds") for name, e in record["experiments"].items()}
        rows = [[k, f"{v:.0f}", measured.get(k, "")] for k, v in plan_record["predicted"].items()]
        text += [
            f"Pool of {plan_record['workers']} concurrent training processes; seconds predicted (planned × "
            f"{SAFETY} into the time left) and measured:\n",
            table(["part", "predicted (s)", "measured (s)"], rows),
        ]
    rows = [
        [
            f"[{name}]({name}/results.md)" if "tables" in e else name,
            e["status"],
            e.get("seconds", ""),
            e.get("message", ""),
        ]
        for name, e in record["experiments"].items()
    ]
    text += ["## Experiments\n", table(["experiment", "status", "seconds", "note"], rows)]
    if record["speed"]:
        models = ", ".join(sorted({f["model"] for f in record["speed"]}))
        text += [f"## Speed: `{models}` (random weights)\n", figures_table(record["speed"])]
    return "\n".join(text)


def unfinished(record: dict, name: str) -> dict:
    """The status of an experiment the experiments stage did not report on."""
    found = record.get("discovery", {}).get(name)
    if found and found["error"]:
        return {"status": "failed at the tiny budget (discover)", "message": found["error"]}
    if name in record.get("plan", {}).get("experiments", []):
        return {"status": "not finished by the deadline"}
    return {"status": "not run", "message": "; ".join(record.get("plan", {}).get("notes", []))}


def collect(record: dict, output: Path, runs: Path, names: list[str]) -> dict:
    """results.json and suite.md from the stages' outputs; the budget paragraph on each experiment page."""
    logs = output / "logs"
    speed = json_lines(logs / "speed.log")
    reference = {f["figure"]: f["value"] for f in speed if f["mode"] == "reference"}
    for figure in json_lines(logs / "compile.log"):
        if figure["mode"] != "reference" and figure["value"] and reference.get(figure["figure"]):
            figure["ratio_to_reference"] = figure["value"] / reference[figure["figure"]]
        speed.append(figure)
    record["speed"] = speed
    suite = runs / ".suite"
    if (suite / "plan.json").is_file():
        record["plan"] = json.loads((suite / "plan.json").read_text())
    progress = {r["experiment"]: r for r in json_lines(suite / "progress.jsonl")}
    record["pretrain"] = [line for line in json_lines(logs / "experiments.log") if "pretrain" in line]
    record["pretrain_seconds"] = next((r["seconds"] for r in record["pretrain"] if r["pretrain"] == "all"), None)
    for name in names:
        entry = progress.get(name) or unfinished(record, name)
        if name in record.get("discovery", {}):
            entry["discovery"] = record["discovery"][name]
        page = output / name / "results.md"
        if page.is_file():
            text = page.read_text()
            head, mark, rest = text.partition("_Generated by")
            line_end = rest.index("\n") + 1
            page.write_text(head + mark + rest[:line_end] + "\n" + budget_note(record) + rest[line_end:])
            entry["tables"] = markdown_tables(page.read_text())
            entry["evaluations"] = {
                p.parent.name: json.loads(p.read_text()) for p in sorted(page.parent.glob("*/summary.json"))
            }
        else:
            shutil.rmtree(output / name, ignore_errors=True)  # what an experiment stopped at the deadline left
        record["experiments"][name] = entry
    record["wall_seconds"] = round(time.time() - record.pop("started"), 1)
    (output / "results.json").write_text(json.dumps(record, indent=2))
    (output / "suite.md").write_text(suite_page(record))
    return record


@dataclass
class Suite:
    """One invocation: what it runs, where it writes, its children's environment, and its record (results.json)."""

    record: dict
    shape: Shape
    names: list[str]
    output: Path
    runs: Path
    env: dict[str, str]

    @property
    def logs(self) -> Path:
        return self.output / "logs"

    @property
    def specs(self) -> Path:
        return self.runs / ".suite"

    def stage_command(self, stage: str, spec: dict) -> list[str]:
        """This module as a child process running `stage` on `spec` (written to a file beside the runs)."""
        path = self.specs / f"{stage}.json"
        path.write_text(json.dumps(spec))
        return [sys.executable, "-m", "benchmarks.gpu_suite", "--stage", stage, "--spec", str(path)]


SPEED = ["--arch", "sd15"]  # the speed stages' model: the SD-1.5 architecture (512²), random weights


def speed_command(modes: str, smoke: bool) -> list[str]:
    return [sys.executable, "-m", "benchmarks.speed", "--modes", modes, *(["--smoke"] if smoke else SPEED)]


def calibrate(shape: Shape, args: argparse.Namespace, runs: Path, logs: Path, env: dict, until: float) -> dict:
    """`texforce train world_text` at the suite's shape: one process alone, then --workers at once."""
    settings = Settings(
        shape.budget(args.calibration_epochs, 1),
        runs,
        runs / "calibration",
        1,
        model=args.model,
        overrides=tuple(args.overrides),
    )
    result: dict = {"config": CALIBRATION_CONFIG, "epochs": args.calibration_epochs, "stages": {}}
    for processes in dict.fromkeys([1, args.workers]):
        seeds, cores = [100 * processes + k for k in range(processes)], shared_cores(env, processes)
        stages = [
            Stage(f"calibrate_{processes}_{seed}", arm_command(settings, CALIBRATION_CONFIG, seed), logs, cores)
            for seed in seeds
        ]
        records = [stage.wait(until) for stage in stages]
        result["stages"][processes] = records
        if any(r["status"] != "done" for r in records):
            break
        walls = [
            (r["seconds"], arm_run(settings, CALIBRATION_CONFIG, seed)[1])
            for r, seed in zip(records, seeds, strict=True)
        ]
        result["single" if processes == 1 else "concurrent"] = asdict(throughput(walls, shape.samples_per_epoch))
    return result


def experiments(args: argparse.Namespace, suite: Suite, calibration: dict, work: dict, end: float) -> dict:
    """The experiments stage (probe, plan, pool, experiments), killed at `end`."""
    spec = {
        "names": [name for name in suite.names if name in work],
        "shape": asdict(suite.shape),
        "deadline": end,
        "work": work,
        "seeds": args.seeds,
        "single": calibration["single"],
        "concurrent": calibration.get("concurrent"),
        "output": str(suite.output),
        "runs": str(suite.runs),
        "model": args.model,
        "overrides": args.overrides,
        "judge": args.judge,
        "proxy": args.proxy,
        "command": suite.record["command"],
        "plan": str(suite.specs / "plan.json"),
        "progress": str(suite.specs / "progress.jsonl"),
    }
    stage = Stage("experiments", suite.stage_command("experiments", spec), suite.logs, suite.env)
    return stage.wait(end - FINAL_RESERVE / 2)


def run(args: argparse.Namespace, suite: Suite, hard: float) -> dict:
    """The stages in order, each within what is left of the deadline; then results.json and the pages."""
    record, logs, env = suite.record, suite.logs, suite.env
    spec = {"names": suite.names, "folder": str(suite.runs / "discovery"), "model": args.model, "judge": args.judge,
            "proxy": args.proxy, "result": str(suite.specs / "work.json")}  # fmt: skip
    stages = [] if args.no_speed else [Stage("speed", speed_command(SPEED_MODES, args.smoke), logs, env)]
    stages.append(Stage("discover", suite.stage_command("discover", spec), logs, env))  # CPU, beside the GPU's speed
    for stage in stages:
        record["stages"][stage.name] = stage.wait(min(hard - FINAL_RESERVE, record["started"] + args.speed_seconds))
    found = suite.specs / "work.json"
    work = record["discovery"] = json.loads(found.read_text()) if found.is_file() else {}
    end = hard - args.compile_seconds  # the experiments' own deadline
    if any(w["error"] is None for w in work.values()):
        until = min(end - FINAL_RESERVE, time.time() + CALIBRATION_SECONDS)
        calibration = record["calibration"] = calibrate(suite.shape, args, suite.runs, logs, env, until)
        rounds = calibration["stages"].values()
        record["stages"]["calibrate"] = {
            "status": "done" if "single" in calibration else "failed",
            "seconds": round(sum(max(r["seconds"] for r in stages) for stages in rounds), 1),
        }
        if "single" in calibration:
            record["stages"]["experiments"] = experiments(args, suite, calibration, work, end)
    if not (args.no_speed or args.no_compile):
        if hard - time.time() - FINAL_RESERVE >= COMPILE_MIN_SECONDS:
            compile_stage = Stage("compile", speed_command("compile", args.smoke), logs, env)
            record["stages"]["compile"] = compile_stage.wait(hard - FINAL_RESERVE / 2)
        else:
            record["stages"]["compile"] = {"status": f"skipped: under {COMPILE_MIN_SECONDS:.0f} s left", "seconds": 0}
    return collect(record, suite.output, suite.runs, suite.names)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for every arm")
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/gpu"), help="results folder (replaced)")
    parser.add_argument("--runs-dir", type=Path, help="training runs (default: OUTPUT_runs; replaced)")
    parser.add_argument("--deadline", type=float, default=540.0, help="hard wall-clock budget in seconds")
    parser.add_argument("--experiments", help="comma-separated (default: all, in `texforce experiment`'s order)")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds wanted (fewer if time is short)")
    parser.add_argument("--workers", type=int, help="concurrent training processes to calibrate and use if faster "
                        "(default: half the cores, at most 8)")  # fmt: skip
    parser.add_argument("--model", help="base model of every arm (default: the arms', the world's)")
    parser.add_argument("--judge", default="world_alignment")
    parser.add_argument("--proxy", default="world_preference")
    parser.add_argument("--calibration-epochs", type=int, help="epochs of each calibration run (default 3; 2 --smoke)")
    parser.add_argument("--speed-seconds", type=float, default=180.0, help="time limit of the speed stage")
    parser.add_argument("--compile-seconds", type=float, default=0.0,
                        help="seconds kept for the compile stage (default: it runs only if time is left)")  # fmt: skip
    parser.add_argument("--no-speed", action="store_true", help="skip the speed and compile stages")
    parser.add_argument("--no-compile", action="store_true", help="skip the compile stage")
    parser.add_argument("--smoke", action="store_true", help="tiny model and shape: checks the command on a CPU")
    for name, value in asdict(Shape()).items():
        if name != "extra":
            flag, smoke = f"--{name.replace('_', '-')}", getattr(SMOKE, name)
            parser.add_argument(flag, type=int, help=f"default {value:,} ({smoke} with --smoke)")
    parser.add_argument("--stage", choices=["discover", "experiments"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage:
        (discover_stage if args.stage == "discover" else experiments_stage)(json.loads(args.spec.read_text()))
        return {}
    started = time.time()
    base = SMOKE if args.smoke else Shape()
    shape = Shape(**{k: v if getattr(args, k, None) is None else getattr(args, k) for k, v in asdict(base).items()})
    args.model = args.model or (SMOKE_MODEL if args.smoke else None)
    args.workers = args.workers or max(1, min(8, len(os.sched_getaffinity(0)) // 2))
    args.calibration_epochs = args.calibration_epochs or (2 if args.smoke else 3)
    names = args.experiments.split(",") if args.experiments else list(EXPERIMENTS)
    if unknown := [name for name in names if name not in EXPERIMENTS]:
        parser.error(f"unknown experiments {', '.join(unknown)}; choose from {', '.join(EXPERIMENTS)}")
    output = fresh(args.output.resolve())
    runs = fresh((args.runs_dir or output.with_name(output.name + "_runs")).resolve())
    (output / "logs").mkdir()
    (runs / ".suite").mkdir()
    paths = [os.environ.get("PYTHONPATH", ""), str(ROOT / "src"), str(ROOT)]
    command = shlex.join(["python", "-m", "benchmarks.gpu_suite", *(sys.argv[1:] if argv is None else argv)])
    record = {
        "command": command, "machine": machine(), "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "deadline_seconds": args.deadline, "started": started, "shape": asdict(shape), "target_seeds": args.seeds,
        "stages": {}, "experiments": {},
    }  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "PYTHONUNBUFFERED": "1"}
    return run(args, Suite(record, shape, names, output, runs, env), started + args.deadline)


if __name__ == "__main__":
    main()
