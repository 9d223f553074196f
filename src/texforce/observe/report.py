"""`texforce report RUN`: one self-contained HTML page per run — no network, no plotting library.

Charts are inline SVG drawn from `metrics.jsonl` (the training reward's mean ± std, each judge it weighs and each it
only logs, the loss the algorithm minimises and its diagnostics, learning rate, phase times); pictures are inline
base64 PNGs (before/after grids for the fixed evaluation seeds, the last epoch's samples); the config, `eval.json`
(before, after, the change's 95% interval and verdict, as the run's last lines) and, when present, the `texforce eval`
summary of `RUN/eval/` are tables.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from pathlib import Path
from typing import Any

import yaml

from texforce.errors import TexforceError

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b"]
WIDTH, HEIGHT, LEFT, RIGHT, TOP, BOTTOM = 520, 220, 66, 14, 42, 26

Series = tuple[str, list[float], list[float] | None]  # label, values, ± band (or None)

# What each algorithm's `ppo/loss` is (metrics keep DDPO's namespace for both)
LOSS_TITLES = {"ddpo": "PPO loss (clipped surrogate)", "backprop": "loss: −reward, backpropagated through the sampler"}
UPDATE_TITLES = {
    "ppo/approx_kl": "approx. KL (PPO)",
    "ppo/clipfrac": "clip fraction (PPO)",
    "ppo/kl_to_frozen": "KL to the frozen policy",
    "ppo/grad_norm": "gradient norm",
}
SPLIT_NAMES = {"train": "training prompts", "heldout": "held-out prompts"}


def reward_terms(spec: str) -> tuple[list[str], list[str]]:
    """The terms of a reward spec (`name[:weight]+…`, validated when the run started) that training optimises, and
    the names of the judges it only logs (weight 0)."""
    trained, logged = [], []
    for term in spec.replace(" ", "").split("+"):
        name, _, weight = term.partition(":")
        if float(weight or 1) == 0:
            logged.append(name)
        else:
            trained.append(term)
    return trained, logged


def _fmt(value: float) -> str:
    return f"{value:.3g}" if value == 0 or 1e-3 <= abs(value) < 1e4 else f"{value:.2e}"


def _frame(title: str, low: float, high: float, unit: str, legend: list[str]) -> list[str]:
    """Title, one row of coloured legend entries, and horizontal grid lines labelled low … high."""
    parts = [f'<text x="{WIDTH / 2}" y="15" text-anchor="middle" class="t">{html.escape(title)}</text>']
    for index, entry in enumerate(legend):
        parts.append(
            f'<text x="{LEFT + 150 * index}" y="31" fill="{COLORS[index % len(COLORS)]}">{html.escape(entry)}</text>'
        )
    for k in range(5):
        value = low + (high - low) * k / 4
        level = _y(value, low, high)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{level:.1f}" y2="{level:.1f}" class="g"/>')
        parts.append(f'<text x="{LEFT - 4}" y="{level + 4:.1f}" text-anchor="end">{_fmt(value)}{unit}</text>')
    return parts


def _y(value: float, low: float, high: float) -> float:
    return HEIGHT - BOTTOM - (value - low) / (high - low) * (HEIGHT - BOTTOM - TOP)


def _svg(parts: list[str]) -> str:
    return f'<svg width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}">{"".join(parts)}</svg>'


def line_chart(title: str, epochs: list[int], series: list[Series], x_label: str = "epoch") -> str:
    """An SVG chart of one or more series over epochs (or another integer axis, `x_label`), each with an optional
    shaded ± band; a NaN value leaves its point out."""
    kept = [
        (
            label,
            [
                (e, v, band[i] if band else 0.0)
                for i, (e, v) in enumerate(zip(epochs, values, strict=True))
                if math.isfinite(v)
            ],
            band is not None,
        )
        for label, values, band in series
    ]
    kept = [k for k in kept if k[1]]
    if not kept:
        return ""
    low = min(v - s for _, good, _ in kept for _, v, s in good)
    high = max(v + s for _, good, _ in kept for _, v, s in good)
    if high == low:
        low, high = low - (abs(low) * 0.1 or 0.5), high + (abs(high) * 0.1 or 0.5)
    first, last = epochs[0], max(epochs[-1], epochs[0] + 1)

    def x(epoch: float) -> float:
        return LEFT + (epoch - first) / (last - first) * (WIDTH - LEFT - RIGHT - 6)

    legend = [f"{label}{' ± std' if band else ''}: {_fmt(good[-1][1])}" for label, good, band in kept]
    parts = _frame(f"{title} by {x_label}", low, high, "", legend)
    for epoch in sorted({first, last, (first + last) // 2}):
        parts.append(f'<text x="{x(epoch):.1f}" y="{HEIGHT - 8}" text-anchor="middle">{epoch}</text>')
    for index, (_, good, band) in enumerate(kept):
        color = COLORS[index % len(COLORS)]
        if band:
            upper = " ".join(f"{x(e):.1f},{_y(v + s, low, high):.1f}" for e, v, s in good)
            lower = " ".join(f"{x(e):.1f},{_y(v - s, low, high):.1f}" for e, v, s in reversed(good))
            parts.append(f'<polygon points="{upper} {lower}" fill="{color}" opacity="0.18"/>')
        line = " ".join(f"{x(e):.1f},{_y(v, low, high):.1f}" for e, v, _ in good)
        parts.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="2"/>')
        parts += [f'<circle cx="{x(e):.1f}" cy="{_y(v, low, high):.1f}" r="2.5" fill="{color}"/>' for e, v, _ in good]
    return _svg(parts)


def stacked_bars(title: str, epochs: list[int], phases: dict[str, list[float]]) -> str:
    """An SVG stacked bar per epoch: seconds spent in each phase."""
    if not epochs or not phases:
        return ""
    top = max(sum(values[i] for values in phases.values()) for i in range(len(epochs))) or 1.0
    slot = (WIDTH - LEFT - RIGHT) / len(epochs)
    legend = [f"{name}: mean {sum(values) / len(values):.2f}s" for name, values in phases.items()]
    parts = _frame(f"{title} by epoch", 0.0, top, "s", legend)
    for i, epoch in enumerate(epochs):
        base = 0.0
        for index, values in enumerate(phases.values()):
            y0, y1 = _y(base + values[i], 0.0, top), _y(base, 0.0, top)
            base += values[i]
            parts.append(
                f'<rect x="{LEFT + (i + 0.1) * slot:.1f}" y="{y0:.1f}" width="{slot * 0.8:.1f}" '
                f'height="{y1 - y0:.1f}" fill="{COLORS[index % len(COLORS)]}"/>'
            )
        if len(epochs) <= 12 or i in (0, len(epochs) - 1):
            parts.append(
                f'<text x="{LEFT + (i + 0.5) * slot:.1f}" y="{HEIGHT - 8}" text-anchor="middle">{epoch}</text>'
            )
    return _svg(parts)


def _image(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _column(rows: list[dict[str, Any]], key: str) -> list[float]:
    return [float(row.get(key, math.nan)) for row in rows]


def _charts(rows: list[dict[str, Any]], config: dict[str, Any]) -> str:
    epochs = [int(row["epoch"]) for row in rows]
    trained, logged = reward_terms(str(config["reward"]))
    title = f"training reward ({' + '.join(trained)})"
    charts = [line_chart(title, epochs, [("mean", _column(rows, "reward_mean"), _column(rows, "reward_std"))])]
    for key in sorted(k for k in rows[-1] if k.startswith("reward/") and k.endswith("_mean")):
        name = key.removeprefix("reward/").removesuffix("_mean")
        std = _column(rows, f"reward/{name}_std") if f"reward/{name}_std" in rows[-1] else None
        kind = "logged only (weight 0)" if name in logged else "training reward's term"
        charts.append(line_chart(f"{kind}: {name}", epochs, [("mean", _column(rows, key), std)]))
    algorithm = config.get("train", {}).get("algorithm", "ddpo")
    titles = {"ppo/loss": LOSS_TITLES.get(algorithm, f"{algorithm} loss"), **UPDATE_TITLES}
    for key, title in titles.items():
        if key in rows[-1]:
            charts.append(line_chart(title, epochs, [(key.removeprefix("ppo/"), _column(rows, key), None)]))
    lrs = sorted(k for k in rows[-1] if k.startswith("lr/"))
    if lrs:
        charts.append(line_chart("learning rate", epochs, [(k, _column(rows, k), None) for k in lrs]))
    phases = {k.removeprefix("time/").removesuffix("_s"): _column(rows, k) for k in rows[-1] if k.startswith("time/")}
    charts.append(stacked_bars("seconds per phase", epochs, phases))
    return "".join(f'<div class="chart">{c}</div>' for c in charts if c)


def _eval_tables(run_dir: Path) -> str:
    parts = []
    eval_path = run_dir / "eval.json"
    if eval_path.is_file():
        results = json.loads(eval_path.read_text())
        before, after, changes = results.get("before", {}), results.get("after", {}), results.get("change", {})
        rows = []
        for name in sorted(before.keys() | after.keys()):
            change = changes.get(name)
            interval = (
                f"{change['mean']:+.4f} ± {change['ci95']:.4f} [{change['mean'] - change['ci95']:+.4f}, "
                f"{change['mean'] + change['ci95']:+.4f}]"
                if change
                else ""
            )
            rows.append(
                [
                    SPLIT_NAMES.get(name, name),
                    before.get(name, ""),
                    after.get(name, ""),
                    f"{after[name] - before[name]:+.4f}" if name in before and name in after else "",
                    interval,
                    change["n"] if change else "",
                    change["verdict"] if change else "",
                ]
            )
        header = ["prompts", "before", "after", "change", "95% interval of the change", "images", "verdict"]
        sampler = results.get("sampler", {})
        settings = (
            f"<p class='meta'>paired images (same prompt, same seed) · {sampler['num_steps']} steps, guidance "
            f"{sampler['guidance_scale']:g}, {len(sampler['seeds'])} seeds</p>"
            if sampler
            else ""
        )
        parts.append(f"<h3>Fixed-seed evaluation (eval.json)</h3>{settings}{_table(header, rows)}")
    summary = run_dir / "eval" / "summary.csv"
    if summary.is_file():
        with open(summary, newline="") as handle:
            table = list(csv.reader(handle))
        parts.append("<h3>texforce eval (eval/summary.csv)</h3>" + _table(table[0], table[1:]))
    return "".join(parts)


def _pictures(run_dir: Path, rows: list[dict[str, Any]]) -> str:
    samples = run_dir / "samples"
    parts = []
    for split in ("train", "heldout"):
        pair = [samples / f"eval_{when}_{split}.png" for when in ("before", "after")]
        found = [_image(p, f"{p.stem.split('_')[1]} training · {split} prompts") for p in pair if p.is_file()]
        if found:
            parts.append(f'<div class="pair">{"".join(found)}</div>')
    if (run_dir / "eval" / "grid.png").is_file():
        parts.append(_image(run_dir / "eval" / "grid.png", "texforce eval grid (rows: configurations)"))
    if rows and (samples / f"epoch_{rows[-1]['epoch']:05d}.png").is_file():
        parts.append(_image(samples / f"epoch_{rows[-1]['epoch']:05d}.png", f"samples of epoch {rows[-1]['epoch']}"))
    return "".join(parts)


STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1120px}
h1{font-size:22px;margin-bottom:4px} h2{font-size:17px;border-bottom:1px solid #ddd;padding-bottom:4px;margin-top:28px}
.meta{color:#666} .chart{display:inline-block;margin:4px} svg{background:#fafafa;border:1px solid #e4e4e4}
svg text{font-size:11px;fill:#444} svg text.t{font-size:13px;font-weight:600} svg .g{stroke:#e0e0e0}
table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;font-size:13px;text-align:right} th{background:#f2f2f2}
figure{display:inline-block;margin:6px} img{image-rendering:pixelated;min-width:256px;border:1px solid #ccc}
figcaption{font-size:12px;color:#555;text-align:center} pre{background:#f6f6f6;padding:8px;font-size:12px}
"""


def build_report(run_dir: Path) -> str:
    """The HTML text of the report of `run_dir`."""
    if not (run_dir / "config.yaml").is_file():
        raise TexforceError(f"{run_dir} is not a run folder (no config.yaml)")
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    metrics = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
    faults = {k: sum(int(r.get(k, 0)) for r in rows) for k in ("faults/dropped_samples", "faults/skipped_steps")}
    done = rows[-1]["epoch"] if rows else 0
    trained, logged = reward_terms(str(config["reward"]))
    judges = f"reward {' + '.join(trained)}" + (f" · logged only: {', '.join(logged)}" if logged else "")
    meta = (
        f"{html.escape(str(config['model']['base']))} · {config['train']['algorithm']} · {html.escape(judges)} · "
        f"epoch {done} of {config['train']['num_epochs']} · dropped samples {faults['faults/dropped_samples']} · "
        f"skipped optimizer steps {faults['faults/skipped_steps']}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>texforce · {html.escape(run_dir.name)}</title>"
        f"<style>{STYLE}</style></head><body><h1>texforce run {html.escape(run_dir.name)}</h1>"
        f"<div class='meta'>{meta}</div>"
        f"<h2>Training curves</h2>{_charts(rows, config) if rows else '<p>no epoch finished yet</p>'}"
        f"<h2>Evaluation</h2>{_eval_tables(run_dir) or '<p>no evaluation yet</p>'}"
        f"<h2>Samples (fixed seeds)</h2>{_pictures(run_dir, rows)}"
        f"<h2>Config</h2><pre>{html.escape(yaml.safe_dump(config, sort_keys=False))}</pre></body></html>"
    )


def write_report(run_dir: Path, output: Path | None = None) -> Path:
    """Write `RUN/report.html` (or `output`) atomically; returns its path."""
    output = output or run_dir / "report.html"
    text = build_report(run_dir)
    tmp = output.with_name(f".{output.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(output)
    except OSError as error:
        raise TexforceError(f"cannot write {output}: {error.strerror or error}") from None
    return output
