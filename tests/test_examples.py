"""Examples that cannot rot: every command example of the `--help` texts, of README.md and the docs pages
(docs/**/*.md) and of the shipped configs' headers runs here, in a dry form.

Each runs through the real CLI (`main(argv)`) in a scratch folder, until the point where it would load a model, a
reward or the world's data: all the checks a command makes before any work (config keys and values, prompt sets,
rewards, prompts against the reward's grammar, adapters present, outputs writable) have then passed, and the run
stops there. Run folders of examples (`runs/NAME…`) are a real tiny run, so an adapter path a run does not have
fails; the other files examples name are stand-ins declared below. Prose mentions a verb in backticks
(`texforce eval`); an inline example with a key=value override is a command and runs too.

The other lines of the pages' shell blocks are either a benchmark or generator (`python -m benchmarks.speed …`:
these need a GPU or minutes, so only their parsing is tested, by the module's own `build_parser`) or one of the
set-up and outside tools listed in OUTSIDE. The pages' Python blocks (the library quickstart) run for real, at the
tiny scale of the other tests.
"""

from __future__ import annotations

import glob
import importlib.util
import itertools
import re
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import tiny_overrides
from PIL import Image

import texforce.experiments
from texforce.cli.main import build_parser, main
from texforce.run.run_config import builtin_configs

ROOT = Path(__file__).resolve().parents[1]
STAND_INS = {  # the files examples name that are the user's own, as empty adapters or small files
    "folders": [
        "lora_weights/sd14_texforce",
        "lora_weights/sd14_refl",
        "refl_lora",
        "path/to/refl_lora",
        "fused",
        "lora_weights/sd-turbo_texforce",
        "lora_weights/sdxl-turbo_texforce",
    ],
    "images": ["a.png", "b.png", "out/1.png", "out/2.png", "circles_p0_s0.png"],
    "texts": {"prompts.txt": "two red circles\na red circle\n", "my_prompts.json": '["a photo of a cat"]'},
    "configs": {"my.yaml": "default"},
}
OPTIONAL = {"wandb"}  # packages examples use that a test machine need not have
WORK = [  # where commands start their work: loading a model or a reward, or the world's builds (a new one joins)
    "diffusers.StableDiffusionPipeline.from_pretrained",
    "texforce.bases.loading.prepare_pipeline",
    "texforce.bases.loading.load_pipeline",  # also on the meta device: `eval` checks adapters, `fuse` fuses there
    "texforce.algorithms.policy.prepare_pipeline",
    "texforce.rewards.load_reward",
    "texforce.adapters.conversion.read_adapters",  # `texforce export`: reading the adapter is its work
    "texforce.world.models.pretrain.pretrain",
    "texforce.world.models.flow.pretrain_flow",
    "texforce.world.judges.evaluate.validate_reward",
    "texforce.world.judges.preference.build_preference",
    "texforce.world.headroom.ceiling.measure_ceiling",
]


def commands(text: str) -> list[str]:
    """The `texforce …` commands of a help text or code block: continued lines joined, `a && b` split."""
    joined = re.sub(r"\\\n\s*", " ", text)
    found = []
    for line in joined.splitlines():
        for part in line.split("&&"):
            part = part.strip().removeprefix("#").strip()
            if part.startswith("texforce ") or " -m texforce " in part:
                found.append(part)
    return found


def help_examples() -> list[tuple[str, str]]:
    parser = build_parser()
    (verbs,) = [a for a in parser._actions if a.dest == "command"]
    parsers = [("texforce --help", parser)] + [(f"texforce {v} --help", p) for v, p in verbs.choices.items()]
    return [(where, c) for where, p in parsers for c in commands(f"{p.description or ''}\n{p.epilog or ''}")]


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def shell_blocks(path: Path) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", path.read_text(), re.S)


def page_examples() -> list[tuple[str, str]]:
    found = []
    for path in PAGES:
        blocks = [c for block in shell_blocks(path) for c in commands(block)]
        inline = [" ".join(span.split()) for span in re.findall(r"`(texforce [^`]*)`", path.read_text())]
        found += [(str(path.relative_to(ROOT)), c) for c in blocks + [s for s in inline if "=" in s]]
    return found


def config_examples() -> list[tuple[str, str]]:
    return [
        (f"configs/{path.name}", c)
        for path in builtin_configs().values()
        for c in commands("\n".join(line for line in path.read_text().splitlines() if line.startswith("#")))
    ]


EXAMPLES = help_examples() + page_examples() + config_examples()


class DryRun(Exception):
    """Raised where the command would start its work: every check before it has passed."""


def stop(*args, **kwargs):
    raise DryRun


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("example_run")
    assert main(["train", "--quiet", *tiny_overrides(tiny_model_dir, root, train__num_epochs=1)]) == 0
    return root / "run"


@pytest.fixture
def scratch(tmp_path, monkeypatch, tiny_run) -> Path:
    """A working folder with the stand-ins, and the CLI stopped where it would load a model or start its work."""
    for image in STAND_INS["images"]:
        (tmp_path / image).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (64, 64)).save(tmp_path / image)
    for name, text in STAND_INS["texts"].items():
        (tmp_path / name).write_text(text)
    for name, shipped in STAND_INS["configs"].items():
        shutil.copy(builtin_configs()[shipped], tmp_path / name)
    (tmp_path / "docs" / "world").mkdir(parents=True)  # `texforce experiment versus` reads the ceiling's record
    shutil.copy(Path(__file__).parents[1] / "docs" / "world" / "ceiling.json", tmp_path / "docs" / "world")
    monkeypatch.chdir(tmp_path)
    find_spec = importlib.util.find_spec  # optional packages an example names (wandb) count as installed
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: find_spec(name, *a) or name in OPTIONAL)
    for work in WORK:
        monkeypatch.setattr(work, stop)

    def experiment(name, settings):  # the arms' configs with the example's overrides, then stop
        from texforce.experiments.harness import arm_config

        arm_config(settings, "world_text")
        raise DryRun

    monkeypatch.setattr(texforce.experiments, "run_experiment", experiment)
    return tmp_path


def argv_of(command: str, run: Path) -> list[str]:
    """The arguments after `texforce`, with run folders (`runs/NAME…`) made the tiny run and globs expanded."""
    words = shlex.split(command, comments=True)
    words = words[words.index("texforce") + 1 :]
    words = [re.sub(r"(?<![\w/])runs/[^/,\s]+", str(run), word) for word in words]
    return [match for word in words for match in (sorted(glob.glob(word)) if "*" in word else [word])]


def test_every_place_has_examples():
    places = {where.split()[0] if where.startswith("configs") else where for where, _ in EXAMPLES}
    assert {"texforce --help", "texforce train --help", "texforce eval --help", "README.md"} <= places
    assert len(EXAMPLES) > 40


@pytest.mark.parametrize("where, command", EXAMPLES, ids=[f"{w}: {c}" for w, c in EXAMPLES])
def test_example_runs_up_to_its_work(where, command, scratch, tiny_run, capsys):
    argv = argv_of(command, tiny_run)
    outputs = {after for flag, after in itertools.pairwise(argv) if flag in ("-o", "--output")}
    for folder in set(STAND_INS["folders"]) - outputs:  # adapters it reads; not the ones it writes
        (scratch / folder).mkdir(parents=True)
    try:
        code = main(argv)
    except DryRun:
        return
    except SystemExit as error:  # argparse: unknown option, missing argument
        pytest.fail(f"{where}: `{command}` does not parse: {capsys.readouterr().err.strip()} ({error})")
    assert code == 0, f"{where}: `{command}` fails: {capsys.readouterr().err.strip()}"


# ---------------------------------------------------------------------------------------------- the other lines
OUTSIDE = (  # set-up and outside tools the pages show; not texforce's to test
    "python3 -m venv ",
    ". .venv/bin/activate",
    "pip install ",
    "pip download ",
    "python -m pytest",
    "hf download ",
    "tensorboard --logdir ",
    "mkdocs serve",
    "mkdocs build",
)
PARSED = re.compile(r"python3? -m ((?:benchmarks|texforce)\.\w+)(.*)")  # a benchmark or a generator: parsed only


def shell_lines() -> list[tuple[str, str]]:
    """Every command of the pages' shell blocks that is not a `texforce` command."""
    found = []
    for path in PAGES:
        for block in shell_blocks(path):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                for part in line.split("&&"):
                    part = part.strip()
                    if part and not part.startswith("#") and part not in commands(part):
                        found.append((str(path.relative_to(ROOT)), part))
    return found


SHELL_LINES = shell_lines()


@pytest.mark.parametrize("where, line", SHELL_LINES, ids=[f"{w}: {c}" for w, c in SHELL_LINES])
def test_other_shell_lines_are_known_or_parse(where, line):
    if line.startswith(OUTSIDE):
        return
    if line.startswith("bash benchmarks/"):  # a prepared script (its dry run is tested in test_gpu_suite)
        assert (ROOT / line.split()[1]).is_file(), f"{where}: `{line}` names no script"
        return
    match = PARSED.match(line)
    assert match, f"{where}: `{line}` is neither a texforce command, a benchmark nor a known outside tool"
    module = importlib.import_module(match[1])
    try:
        module.build_parser().parse_args(shlex.split(match[2], comments=True))
    except SystemExit as error:
        pytest.fail(f"{where}: `{line}` does not parse ({error})")


def python_examples() -> list[tuple[str, str]]:
    blocks = {}
    for path in PAGES:
        for block in re.findall(r"```python\n(.*?)```", path.read_text(), re.S):
            blocks.setdefault(block, str(path.relative_to(ROOT)))
    return [(where, block) for block, where in blocks.items()]


PYTHON = python_examples()
TINY = [  # the world's default run at the tiny scale of the other tests
    "sample.num_steps=4",
    "sample.batch_size_per_device=4",
    "sample.num_batches_per_epoch=2",
    "train.batch_size_per_device=2",
    "train.gradient_accumulation_steps=2",
    "train.num_epochs=1",
    "ddpo.timesteps_per_call=1",
    "backprop.num_grad_steps=4",  # the default run backprops through its whole chain: here 4 steps
    "eval.num_prompts=2",
    "eval.num_seeds=1",
]


def test_the_library_quickstart_is_shown():
    assert "README.md" in [where for where, block in PYTHON if "texforce.train(" in block]
    assert any(
        "texforce.train(" in block
        for block in re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "getting-started.md").read_text(), re.S)
    )


@pytest.mark.parametrize("where, code", PYTHON, ids=[w for w, _ in PYTHON])
def test_python_example_runs(where, code, tmp_path, monkeypatch):
    """As pasted, except that every config it loads gets TINY's overrides last; the files it writes are checked."""
    import texforce.run.run_config

    load_config = texforce.run.run_config.load_config
    monkeypatch.setattr(
        texforce.run.run_config,
        "load_config",
        lambda path=None, overrides=(): load_config(path, [*overrides, *TINY]),
    )
    monkeypatch.chdir(tmp_path)
    exec(compile(code, where, "exec"), {})
    for name in re.findall(r'save\("([^"]+)"\)', code):
        assert Image.open(tmp_path / name).size == (64, 64)
    assert list(tmp_path.glob("runs/*/lora/pytorch_lora_weights.safetensors"))
