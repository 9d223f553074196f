"""What a verdict needs from each run, committed beside the experiment's page so that seeds accumulate (issue #30).

    docs/<experiment>/runs/base/scores.csv            the base model's per-image scores (no training seed)
    docs/<experiment>/runs/<arm>/s<seed>/scores.csv   per-image scores: evaluation, prompt, seed, reward, score
    docs/<experiment>/runs/<arm>/s<seed>/metrics.jsonl  the run's per-epoch metrics (trained arms)
    docs/<experiment>/runs/<arm>/s<seed>/adapter.safetensors  its LoRA in fp16, kohya layout (the arms that stacks
                                                     and fusions combine)

A label of an evaluation (`text/s0`, `stacked/s2`, `base`) is its folder under runs/. An evaluation's name is its
prompt set (`heldout`), with `:style` when its prompts were written in another style than plain (`styles:engineered`,
`evaluation_key`). An experiment run with more seeds reads these and trains and judges only the seeds not yet
recorded; `texforce experiment NAME --page-only` rewrites the page from them alone. Pages judged before these
folders existed hold only `eval_*/results.csv`: `load_records` imports those per label (scores only: their metrics
and adapters were never committed).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from texforce.files import save_safetensors, write_text_atomic

RUNS = "runs"
SCORES = "scores.csv"
METRICS = "metrics.jsonl"
ADAPTER = "adapter.safetensors"
FIELDS = ("evaluation", "prompt", "seed", "reward", "score")
Images = dict[tuple[str, int], float]  # (prompt, noise seed) → score


def image_mean(images: Mapping[tuple[str, int], float]) -> float:
    """The mean score over one configuration's images."""
    return sum(images.values()) / len(images)


@dataclass
class Records:
    """Every committed per-image score of one experiment, by label, then (evaluation, reward); and the labels whose
    metrics and adapters are committed."""

    folder: Path
    scores: dict[str, dict[tuple[str, str], Images]] = field(default_factory=dict)

    def base(self, evaluation: str, reward: str) -> Images:
        return self.scores["base"][(evaluation, reward)]

    def arm(self, arm: str, evaluation: str, reward: str, seeds: Sequence[int] | None = None) -> dict[int, Images]:
        """Per-image scores of `arm` by training seed (those recorded, or `seeds`)."""
        found = {seed: self.scores.get(f"{arm}/s{seed}", {}).get((evaluation, reward)) for seed in self.seeds(arm)}
        return {s: v for s, v in found.items() if v is not None and (seeds is None or s in seeds)}

    def seeds(self, arm: str) -> list[int]:
        """Training seeds with scores for `arm`."""
        found = [label.removeprefix(f"{arm}/s") for label in self.scores if label.startswith(f"{arm}/s")]
        return sorted(int(s) for s in found if s.isdigit())

    def complete_seeds(self, arms: Sequence[str], evaluations: Sequence[str]) -> list[int]:
        """Seeds every one of `arms` has scores for on every evaluation (and base is recorded): nothing to redo."""
        if "base" not in self.scores:
            return []
        have = [{s for s in self.seeds(a) if all(e in {k[0] for k in self.scores[f"{a}/s{s}"]} for e in evaluations)}
                for a in arms]  # fmt: skip
        return sorted(set.intersection(*have)) if have else []

    def metrics(self, arm: str) -> dict[int, list[dict]]:
        """Per-epoch metrics of `arm`'s recorded runs, by seed (the seeds whose metrics.jsonl is committed)."""
        found = {}
        for seed in sorted(set(self.seeds(arm)) | set(_seed_folders(self.folder / arm))):
            path = self.folder / arm / f"s{seed}" / METRICS
            if path.is_file():
                found[seed] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return found


def _seed_folders(folder: Path) -> list[int]:
    if not folder.is_dir():
        return []
    return sorted(int(p.name[1:]) for p in folder.iterdir() if p.name[:1] == "s" and p.name[1:].isdigit())


def label_folder(output: Path, label: str) -> Path:
    return output / RUNS / label


def evaluation_key(evaluation: str, style: str = "plain") -> str:
    """The name scores are recorded under: the evaluation, and the prompt style when it is not plain."""
    return evaluation if style == "plain" else f"{evaluation}:{style}"


def record_evaluation(output: Path, evaluation: str) -> list[str]:
    """Copy OUTPUT/eval_`evaluation`/results.csv into each label's scores.csv (that evaluation's rows replaced, in
    every style: `evaluation_key`); the labels recorded."""
    by_label: dict[str, list[dict]] = {}
    with open(output / f"eval_{evaluation}" / "results.csv") as handle:
        for row in csv.DictReader(handle):
            by_label.setdefault(row["config"], []).append(row)
    for label, rows in by_label.items():
        path = label_folder(output, label) / SCORES
        recorded = _read_scores(path) if path.is_file() else []
        kept = [r for r in recorded if r["evaluation"].partition(":")[0] != evaluation]
        for r in rows:
            kept.append(
                {"evaluation": evaluation_key(evaluation, r.get("style") or "plain"), **{k: r[k] for k in FIELDS[1:]}}
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        out = io.StringIO()
        writer = csv.DictWriter(out, FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
        write_text_atomic(path, out.getvalue())
    return list(by_label)


def _read_scores(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


def load_records(output: Path) -> Records:
    """The committed records of the experiment at OUTPUT; a page without runs/ has its eval_*/results.csv imported
    first (written into runs/, so that later seeds add to them)."""
    if not (output / RUNS).is_dir():
        for results in sorted(output.glob("eval_*/results.csv")):
            record_evaluation(output, results.parent.name.removeprefix("eval_"))
    records = Records(output / RUNS)
    for path in sorted((output / RUNS).rglob(SCORES)):
        label = path.parent.relative_to(output / RUNS).as_posix()
        by_key = records.scores.setdefault(label, {})
        for row in _read_scores(path):
            key = (row["evaluation"], row["reward"])
            by_key.setdefault(key, {})[(row["prompt"], int(row["seed"]))] = float(row["score"])
    return records


def record_run(output: Path, label: str, run_dir: Path, adapter: bool) -> None:
    """Commit a trained run's per-epoch metrics and, with `adapter`, its LoRA in fp16 under runs/`label`/."""
    folder = label_folder(output, label)
    folder.mkdir(parents=True, exist_ok=True)
    if (run_dir / METRICS).is_file():
        shutil.copyfile(run_dir / METRICS, folder / f".{METRICS}.tmp")
        os.replace(folder / f".{METRICS}.tmp", folder / METRICS)
    if adapter:
        save_adapter_fp16(run_dir / "lora", folder / ADAPTER)


def save_adapter_fp16(source: Path, path: Path) -> Path:
    """Any adapter texforce reads (here a run's `lora/`), as one kohya-layout safetensors file with fp16 weights
    (alphas stay fp32 scalars): half the size of the run's own, and read by `texforce eval`, `fuse`, `export`."""
    from texforce.adapters.conversion import read_adapters
    from texforce.adapters.formats import kohya_state

    tensors, header = kohya_state(read_adapters(source))
    tensors = {key: value.half() if value.dim() else value for key, value in tensors.items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_safetensors(tensors, tmp, metadata=header)
    os.replace(tmp, path)
    return path
