"""The GPU suite's child processes: a `Stage` (a process group killed at its time limit) and what runs in them, the
discovery of every experiment at the tiny budget, and the experiments stage (plan, training pool, experiments).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import torch

from benchmarks.gpu_plan import (
    CALIBRATION_CONFIG,
    FINAL_RESERVE,
    Plan,
    Shape,
    Throughput,
    Work,
    evaluation_seconds,
    plan,
    pooled_arms,
)
from texforce.experiments import BUDGETS, run_experiment
from texforce.experiments.harness import (
    Budget,
    DeadlineReached,
    Settings,
    arm_command,
    arm_config,
    arm_run,
    evaluate,
)
from texforce.observe.evaluation import AdapterSetup
from texforce.prompts import load_prompt_set

ROOT = Path(__file__).resolve().parents[1]


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


def shared_cores(env: dict[str, str], processes: int) -> dict[str, str]:
    """`env` for one of `processes` training processes at once: an equal share of the cores for its CPU threads
    (unless OMP_NUM_THREADS is set already)."""
    threads = max(1, len(os.sched_getaffinity(0)) // processes)
    return {**env, "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", str(threads))}


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
