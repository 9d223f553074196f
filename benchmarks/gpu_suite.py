"""One command for one GPU: the paper-claim experiments at DDPO's budget and the real-SD speed benchmark, sized from
throughput measured at its start and held to a hard wall-clock deadline (docs/performance/gpu-suite.md).

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
  speed_ARCH   with --flow, benchmarks.speed on SD3.5-medium and FLUX.1-dev (1024², 28 steps, random weights, bf16):
               sampling, a PPO update on the text encoders, direct backprop; each within --flow-seconds
  compile      benchmarks.speed's compile mode (torch.compile'd U-Net, its compile seconds), if the time left allows
Writes OUTPUT/results.json (every figure: speed, calibration, plan, each experiment's tables and evaluation
summaries), OUTPUT/suite.md, OUTPUT/NAME/results.md per experiment (each stating the budget it got),
OUTPUT/experiments.md and OUTPUT/logs/. Training runs go to OUTPUT_runs (--runs-dir).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.gpu_pages import collect
from benchmarks.gpu_plan import (
    CALIBRATION_CONFIG,
    FINAL_RESERVE,
    SMOKE,
    SMOKE_MODEL,
    Shape,
    throughput,
)
from benchmarks.gpu_stages import ROOT, Stage, discover_stage, experiments_stage, shared_cores
from texforce.experiments import EXPERIMENTS
from texforce.experiments.harness import (
    Settings,
    arm_command,
    arm_run,
    machine,
)

COMPILE_MIN_SECONDS = 150.0  # the compile stage starts only with this much left (SD-1.5's U-Net compiles for minutes)
CALIBRATION_SECONDS = 150.0  # time limit of the calibration runs
SPEED_MODES = "reference,texforce,channels_last,backprop"


def fresh(path: Path) -> Path:
    """Empty `path` for this run; a non-empty folder the suite did not make (no `.gpu_suite` in it) is refused."""
    if path.exists() and any(path.iterdir()) and not (path / ".gpu_suite").exists():
        raise SystemExit(f"gpu_suite: {path} exists and was not made by the suite; pick another folder")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    (path / ".gpu_suite").touch()
    return path


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


# --flow: the flow-matching rows (random weights, bf16, SD3.5's and FLUX.1-dev's usual 28 steps, 1024²)
FLOW_SPEED = {
    "sd35-medium": ["--steps", "28", "--sample-batch", "4", "--train-batch", "2", "--backprop-batch", "1"],
    "flux-dev": ["--steps", "28", "--sample-batch", "2", "--train-batch", "1", "--backprop-batch", "1"],
}
FLOW_MODES = "texforce,backprop"  # sampling and one PPO update, and backprop's step and memory


def speed_command(modes: str, smoke: bool, arch: str | None = None) -> list[str]:
    """benchmarks.speed: on SD-1.5 (`SPEED`), or on a flow `arch` with its `FLOW_SPEED` shape."""
    shape = (["--arch", arch] + ([] if smoke else FLOW_SPEED[arch])) if arch else ([] if smoke else SPEED)
    return [sys.executable, "-m", "benchmarks.speed", "--modes", modes, *(["--smoke"] if smoke else []), *shape]


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
    if args.flow and not args.no_speed:  # on the GPU after SD-1.5's figures, one flow model at a time
        for arch in FLOW_SPEED:
            stage = Stage(f"speed_{arch}", speed_command(FLOW_MODES, args.smoke, arch), logs, env)
            record["stages"][stage.name] = stage.wait(min(hard - FINAL_RESERVE, time.time() + args.flow_seconds))
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


def build_parser() -> argparse.ArgumentParser:
    """The command line of `python -m benchmarks.gpu_suite`."""
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
    parser.add_argument("--flow", action="store_true",
                        help=f"also time {' and '.join(FLOW_SPEED)} (random weights, bf16): sampling, a PPO update, "
                        "backprop")  # fmt: skip
    parser.add_argument("--flow-seconds", type=float, default=240.0, help="time limit of each flow model's stage")
    parser.add_argument("--no-compile", action="store_true", help="skip the compile stage")
    parser.add_argument("--smoke", action="store_true", help="tiny model and shape: checks the command on a CPU")
    for name, value in asdict(Shape()).items():
        if name != "extra":
            flag, smoke = f"--{name.replace('_', '-')}", getattr(SMOKE, name)
            parser.add_argument(flag, type=int, help=f"default {value:,} ({smoke} with --smoke)")
    parser.add_argument("--stage", choices=["discover", "experiments"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
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
