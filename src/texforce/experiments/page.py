"""The generated pages: `docs/NAME/results.md` per experiment and the `docs/experiments.md` index beside them."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from texforce.errors import TexforceError
from texforce.experiments.harness import Settings, machine
from texforce.experiments.plan import LOOK_LEVEL, STEPS, next_seeds
from texforce.experiments.verdicts import UNDECIDED, Verdict
from texforce.files import write_text_atomic

INDEX = "experiments.md"
SVG_STYLE = (
    "<style>text{font-family:sans-serif;font-size:11px;fill:#444} text.t{font-size:13px;font-weight:600} "
    ".g{stroke:#e0e0e0}</style>"
)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def standalone_svg(svg: str) -> str:
    """A `report.line_chart` (its bands 95% intervals here) as an SVG file of its own: namespace and style added."""
    svg = svg.replace(" ± std: ", " ± 95% CI: ")
    head, sep, rest = svg.partition(">")
    return head.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1) + sep + SVG_STYLE + rest + "\n"


def verdict_section(verdicts: Sequence[Verdict]) -> str:
    """The page's `## Verdict` section: one row per claim (evidence, outcome, reason, the seeds it would need and
    the seeds the plan runs next), then each contrast with its interval, margin and variance components."""
    rows = []
    for v in verdicts:
        done = [int(s) for s in v.contrasts[0].per_seed] if v.contrasts else []  # none: no per-seed data committed
        upcoming = next_seeds(done, v.outcome != UNDECIDED)
        needed = "—" if not v.contrasts else (str(v.needed) if v.needed else "> 999")
        plan = ", ".join(map(str, upcoming)) if upcoming else "none"
        rows.append([v.claim, v.evidence, f"**{v.outcome}**: {v.reason}", needed, plan])
    text = "## Verdict\n\n" + table(["claim", "measured", "verdict", "seeds needed", "seeds to run next"], rows)
    contrasts = [(v, c) for v in verdicts for c in v.contrasts]
    if contrasts:
        text += (
            f"\nEach contrast: per training seed, the difference of two arms' means on the same images; "
            f"{LOOK_LEVEL:.0%} t-interval over the seeds (the plan's per-look level: looks at "
            f"{', '.join(map(str, STEPS))} seeds, 5% over all looks). Margin: ±25% of the gain the claim is about. "
            "Shares: of the variance of one seed's mean difference, the training seed's, the prompts' (drawn anew) "
            "and the rest (noise, seed × prompt). Seeds needed: the fewest seeds whose interval, at the observed "
            "difference and spread, would exclude 0 or lie inside the margin (against an own adapter, where the "
            "claim is that a combination keeps its gain: lie wholly above or below −margin) — a precision "
            "calculation: at that number it decides about half the time.\n\n"
        )
        text += table(["contrast", "difference", f"{LOOK_LEVEL:.0%} interval", "seeds", "margin",
                       "shares seed / prompt / image", "seeds needed"],
                      [_contrast_row(c) for _, c in contrasts])  # fmt: skip
    return text + "\n"


def _contrast_row(c) -> list[str]:
    e, shares = c.interval, c.components.shares() if c.components else None
    split = " / ".join(f"{shares[k]:.0%}" for k in ("seed", "prompt", "image")) if shares else "—"
    interval = f"[{e.low:+.4f}, {e.high:+.4f}]" if e.n > 1 else "—"
    margin = f"±{c.margin:.4f}" if c.margin is not None else "—"
    needed = c.needed if e.n > 1 else None
    return [c.name, f"{e.mean:+.4f}", interval, str(e.n), margin, split, str(needed) if needed else "> 999"]


def prompt_list(prompts: Sequence[str], limit: int = 6) -> str:
    shown = "; ".join(f"“{p}”" for p in prompts[:limit])
    return shown + (f"; … ({len(prompts)} in all)" if len(prompts) > limit else f" ({len(prompts)} in all)")


def evaluation(settings: Settings, ran: dict[str, str]) -> str:
    """What the run judged: each evaluation it rendered; else (every seed read from the records) the previous
    page's row; else the budget's default."""
    b = settings.budget
    if settings.judged_on:
        return "; ".join(settings.judged_on) + f"; {b.eval_steps} DDIM steps (eta 0)"
    if (
        "evaluation" not in ran
        and (settings.output / "results.md").is_file()
        and (settings.output / "meta.json").is_file()
    ):
        ran = previous_run(settings.output)
    seeds = ", ".join(map(str, settings.eval_seeds))
    default = f"{b.num_eval_prompts} prompts max × seeds {seeds}, {b.eval_steps} DDIM steps (eta 0)"
    return ran.get("evaluation", default)


def previous_run(output: Path) -> dict[str, str]:
    """The header rows of the page at OUTPUT (command, evaluation, wall time, machine, date, …) and its meta.json:
    a page rewritten from its records keeps the run that measured them."""
    page, meta_path = output / "results.md", output / "meta.json"
    if not page.is_file() or not meta_path.is_file():
        raise TexforceError(f"{output} has no results.md and meta.json to rewrite; run the experiment first")
    rows = {}
    for line in page.read_text().splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(parts) == 2 and parts[0]:
            rows.setdefault(parts[0], parts[1])
        if line.startswith("## "):
            break
    return {**rows, **{k: str(v) for k, v in json.loads(meta_path.read_text()).items() if k != "verdicts"}}


def seed_ranges(seeds: Sequence[int]) -> str:
    """Seeds as runs: [0, 1, 2, 3, 8, 9] → "0–3, 8–9"."""
    spans: list[list[int]] = []
    for seed in sorted(seeds):
        if spans and seed == spans[-1][1] + 1:
            spans[-1][1] = seed
        else:
            spans.append([seed, seed])
    return ", ".join(f"{a}–{b}" if b > a else str(a) for a, b in spans)


def seed_machines(output: Path, seeds: Sequence[int], reused: Sequence[int]) -> dict[str, list[int]]:
    """Which machine trained and judged each seed of the page at OUTPUT: a seed read from the committed runs keeps
    the machine the previous meta.json names for it (its one `machine` when it predates `machines`), the others
    ran on this one."""
    meta_path, reused = output / "meta.json", sorted(set(reused))
    previous: dict[str, list[int]] = {}
    if reused and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        previous = meta.get("machines") or {meta.get("machine", "not recorded"): reused}
    found = {name: kept for name, ran in previous.items() if (kept := sorted(set(ran) & set(reused)))}
    if missing := sorted(set(reused) - {s for kept in found.values() for s in kept}):
        found.setdefault("not recorded", []).extend(missing)
    if new := [seed for seed in seeds if seed not in reused]:
        here = machine()  # reads /proc/cpuinfo: once
        found[here] = sorted({*found.get(here, []), *new})
    return found


def describe_machines(machines: dict[str, list[int]]) -> str:
    """One machine's name, or each machine with the seeds it ran."""
    if len(machines) == 1:
        return next(iter(machines))
    return "; ".join(f"{name} (seeds {seed_ranges(seeds)})" for name, seeds in machines.items())


def write_results(settings: Settings, name: str, title: str, claim: str, body: str, seconds: float) -> Path:
    """OUTPUT/results.md: what was run, on what, how long, then the experiment's own tables; and the index. With
    `settings.page_only` the page is rewritten from its records: the run's rows (command, machine, date, wall time)
    are the previous page's, and a row says when and how it was rewritten."""
    b = settings.budget
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in settings.seconds.items())
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    ran = previous_run(settings.output) if settings.page_only else {}
    seeds = sorted({int(s) for v in settings.verdicts for c in v.contrasts for s in c.per_seed}) or settings.seeds
    if settings.page_only:
        machines = json.loads((settings.output / "meta.json").read_text()).get("machines")
        ran_on = ran.get("machine", machine())
    else:
        machines = seed_machines(settings.output, seeds, settings.reused)
        ran_on = describe_machines(machines)
    reused = f" ({', '.join(map(str, settings.reused))} read from the committed runs/)" if settings.reused else ""
    cached = "runs reused from the cache cost nothing"
    seeds_row = f"{', '.join(map(str, seeds))}{reused}"
    if ran.get("training seeds", "").partition(" (")[0] == seeds_row:  # keep which seeds the run read back
        seeds_row = ran["training seeds"]
    header = [
        f"# {title}\n",
        "_Generated by the command below; do not edit by hand._\n",
        f"**Claim (TexForce paper).** {claim}\n",
        "| | |\n|---|---|",
        f"| command | {ran.get('command', f'`{settings.command}`')} |",
        f"| budget | `{b.name}`{' (plumbing check only: numbers mean nothing)' if b.name == 'tiny' else ''} |",
        f"| training seeds | {seeds_row} |",
        f"| evaluation | {evaluation(settings, ran)} |",
        f"| judge | `{settings.judge}` |",
        f"| runs | `{settings.runs_dir}`; what each seed's verdict needs: `runs/` beside this page |",
        f"| wall time | {ran.get('wall time', f'{seconds:.0f} s ({phases}; {cached})')} |",
        f"| machine | {ran_on} |",
        f"| date | {ran.get('date', now)} |",
        *(
            [
                f"| page | rewritten {now} from the committed per-run records (`texforce experiment {name} "
                "--page-only`, nothing trained or judged) |"
            ]
            if settings.page_only
            else []
        ),
        "",
        "Intervals: ± is the half-width of a two-sided 95% Student-t interval across training seeds (n = seeds) of "
        "each seed's mean score over all evaluation images, unless a table says otherwise.\n",
    ]
    verdicts = verdict_section(settings.verdicts) if settings.verdicts else ""
    path = settings.output / "results.md"
    write_text_atomic(path, "\n".join(header) + "\n" + verdicts + body)
    meta = {
        "experiment": name,
        "title": title,
        "budget": b.name,
        "seeds": len(seeds),
        "seconds": float(ran.get("seconds", seconds)),
        "machine": ran_on,
        "date": ran.get("date", now),
    }
    if machines:
        meta["machines"] = machines
    if settings.verdicts:
        meta["verdicts"] = [v.as_dict() for v in settings.verdicts]
    write_text_atomic(settings.output / "meta.json", json.dumps(meta, indent=2))
    write_index(settings.output.parent)
    write_claims(settings.output.parent / "results" / "index.md")
    return path


def write_index(root: Path) -> Path:
    """ROOT/experiments.md: one line per experiment folder under ROOT that has a results page."""
    rows = []
    for meta_path in sorted(root.glob("*/meta.json")):
        meta = json.loads(meta_path.read_text())
        link = os.path.relpath(meta_path.parent / "results.md", root)
        machine_ran = meta.get("machine", "not recorded")
        rows.append([f"[{meta['experiment']}]({link})", meta["title"], meta["budget"], meta["seeds"],
                     f"{meta['seconds']:.0f}", machine_ran, meta.get("date", "not recorded")])  # fmt: skip
    text = (
        "# Experiments\n\n_Generated by `texforce experiment`; do not edit by hand._ Each claim of the TexForce "
        "paper, tested in the offline world and judged by the exact `world_alignment` reward on held-out prompts.\n\n"
        + table(["experiment", "claim", "budget", "training seeds", "wall time (s)", "machine", "date"], rows)
    )
    path = root / INDEX
    write_text_atomic(path, text)
    return path


CLAIMS_START, CLAIMS_END = "<!-- claims: generated from each page's meta.json -->", "<!-- claims: end -->"


def write_claims(index: Path) -> None:
    """The block between `CLAIMS_START` and `CLAIMS_END` of the results index (when it has one): every generated
    page's claims with their verdict, contrasts, seeds, the seeds they need, and the machine that judged them."""
    if not index.is_file() or CLAIMS_START not in (text := index.read_text()):
        return
    rows = []
    for meta_path in sorted(index.parent.parent.glob("*/meta.json")):
        meta = json.loads(meta_path.read_text())
        link = f"[{meta['experiment']}](../{meta['experiment']}/results.md)"
        for v in meta.get("verdicts", []):
            contrasts = "; ".join(
                f"{c['contrast']} {c['difference']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]"
                + (f" (margin ±{c['margin']:.3f})" if c["margin"] is not None else "")
                for c in v.get("contrasts", [])
            )
            needed = v.get("needed") or ("> 999" if v.get("contrasts") else "—")
            outcome = f"{v['outcome']}: {v['reason']}"
            seeds = v.get("seeds") or f"{meta['seeds']} run, none recorded"
            rows.append([v["claim"], contrasts or v["evidence"], outcome, seeds, needed,
                         meta.get("machine", "not recorded"), link])  # fmt: skip
    block = table(["claim", "paired difference [99% interval]", "verdict", "seeds", "seeds needed",
                   "judged on", "page"], rows)  # fmt: skip
    head, _, rest = text.partition(CLAIMS_START)
    tail = rest.partition(CLAIMS_END)[2]
    write_text_atomic(index, f"{head}{CLAIMS_START}\n{block}{CLAIMS_END}{tail}")
