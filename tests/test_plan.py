"""`texforce plan`: the live-memory trace on the meta device against hand counts, the GPU attention memory model,
per-block checkpointing in the plan, the CLI, and every shipped config stating an up-to-date plan that fits one
80 GB GPU."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F

from texforce.bases.meta import build_meta_pipeline
from texforce.cli.main import main
from texforce.run.memory import LiveMemory, gpu_attention
from texforce.run.plan import GIB, GPU_SIZES, HEADER_PREFIX, RESERVE_GIB, header_line, plan_memory, with_header
from texforce.run.run_config import builtin_configs, load_config

META = torch.device("meta")
MB = 1000 * 1000 * 4  # bytes of a 1000 × 1000 fp32 tensor
HEADER = re.compile(
    re.escape(HEADER_PREFIX) + r"peak (?P<peak>[\d.]+) GiB GPU, host (?P<host>[\d.]+) GiB; (?P<verdict>.+)$"
)


def test_live_memory_counts_each_storage_once_until_it_is_freed():
    weight = torch.empty(1000, 1000, device=META)  # made before the trace: not counted, nor its views
    memory = LiveMemory()
    with memory:
        a = torch.empty(1000, 1000, device=META)
        b = a * 2
        view = b.t()  # the same storage as b
        assert (memory.current, memory.peak) == (2 * MB, 2 * MB)
        del a
        assert memory.current == MB
        weight.t() @ view  # its output only
        assert memory.peak == 2 * MB and memory.current == MB
        x = torch.empty(1000, 1000, device=META, requires_grad=True)
        y = x.sin()  # saves x
        del y  # the output goes, what autograd saved stays
        assert memory.current == 2 * MB


def test_gpu_attention_keeps_no_attention_matrix():
    shape = (1, 2, 1024, 64)  # (B, H, L, D)
    q, k, v = (torch.empty(shape, device=META, requires_grad=True) for _ in range(3))
    peaks = {}
    for name, context in (("gpu", gpu_attention), ("math", torch.enable_grad)):
        memory = LiveMemory()
        with context(), memory:
            out = F.scaled_dot_product_attention(q, k, v)
        peaks[name] = memory.peak
        out.sum()
    qkv = 1 * 2 * 1024 * 64 * 4
    assert peaks["gpu"] == qkv + 1 * 2 * 1024 * 4  # the output and the fp32 log-sum-exp
    assert peaks["math"] >= 1 * 2 * 1024 * 1024 * 4  # the attention matrix (B, H, L, L)


def test_per_block_checkpointing_lowers_the_planned_update():
    overrides = ["model.base=texforce/tiny-random", "reward=jpeg_compressibility", "prompts.eval=null"]
    plain = plan_memory(load_config(None, overrides))
    checked = plan_memory(load_config(None, [*overrides, "ddpo.gradient_checkpointing=true"]))
    phases = {p.name: p for p in plain.phases}
    assert {p.name for p in checked.phases} == set(phases) == {"sampling", "update micro-batch", "evaluation batch"}
    for p in checked.phases:
        if p.name == "update micro-batch":
            assert 0 < p.peak_bytes < phases[p.name].peak_bytes
        else:  # no graph: checkpointing changes nothing
            assert p.peak_bytes == phases[p.name].peak_bytes
    assert plain.largest_batches()["train.batch_size_per_device"] > 1000  # a tiny model


def test_a_hub_id_without_weights_gets_its_family_architecture():
    pipe, source = build_meta_pipeline("stabilityai/stable-diffusion-xl-base-1.0")
    assert type(pipe).__name__ == "StableDiffusionXLPipeline" and "SDXL architecture" in source
    assert pipe.unet.device == META and sum(p.numel() for p in pipe.unet.parameters()) == 2_567_463_684


def test_the_header_line_is_replaced_not_repeated():
    text = "# a config\n# run it so\nmodel:\n  base: x\n"
    once = with_header(text, HEADER_PREFIX + "first")
    assert once == f"# a config\n# run it so\n{HEADER_PREFIX}first\nmodel:\n  base: x\n"
    assert with_header(once, HEADER_PREFIX + "second") == once.replace("first", "second")


def shipped_headers() -> dict[str, re.Match]:
    found = {}
    for name, path in builtin_configs().items():
        lines = [line for line in path.read_text().splitlines() if line.startswith(HEADER_PREFIX)]
        assert len(lines) == 1, f"{name}: run `texforce plan {name} --write-header`"
        found[name] = HEADER.match(lines[0])
        assert found[name], lines[0]
    return found


def test_every_shipped_config_states_a_consistent_plan_that_fits_one_80_gb_gpu():
    for name, match in shipped_headers().items():
        peak = float(match["peak"])
        fitting = [size for size in GPU_SIZES if peak + RESERVE_GIB <= size + 0.05]  # the line rounds to 0.1
        assert match["verdict"] == f"fits {'/'.join(map(str, fitting))} GB", name
        assert 80 in fitting, f"{name} needs {peak} GiB: more than one 80 GB GPU"


@pytest.mark.parametrize("name", ["flux_schnell_imagereward", "world_ddpo"])
def test_the_stated_plan_is_up_to_date(name):
    """FLUX (the largest) and the DDPO world config: the header is what `texforce plan --write-header` writes now."""
    plan = plan_memory(load_config(name))
    assert shipped_headers()[name].group(0) == header_line(plan), f"run `texforce plan {name} --write-header`"
    assert plan.fits(80) and plan.gpu_peak_bytes > 40 * GIB if name.startswith("flux") else plan.fits(24)


def test_the_command_prints_json_and_refuses_overrides_with_write_header(capsys):
    assert main(["plan", "world_ddpo", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["fits"] == {"24 GB": True, "40 GB": True, "80 GB": True} and plan["verdict"] == "fits 24/40/80 GB"
    assert [p["name"] for p in plan["phases"]] == ["sampling", "update micro-batch", "evaluation batch"]
    assert main(["plan", "world_ddpo", "train.batch_size_per_device=2", "--write-header"]) == 2
    assert "--write-header states the config file's own plan" in capsys.readouterr().err
