"""Host memory of loading a pipeline, checking adapters against it (`texforce eval`) and fusing adapters
(`texforce fuse`), on an SDXL-size model: the peak resident set of a fresh process per case, before and after
loading went straight into the frozen dtype and check/fuse went to the meta device.

    nice -n 10 python -m benchmarks.host_memory                   # SDXL 1.0 size (3.5 B parameters), ~7 GB on disk
    python -m benchmarks.host_memory --model sd15                 # SD 1.5 size (1.1 B)
    python -m benchmarks.host_memory --model tiny                 # seconds: checks the harness

The model is `texforce/sdxl-random` (`bases/sd.py`: SDXL's published configs, random weights, nothing downloaded),
built once in bf16 and saved as a pipeline folder with two random text-encoder adapters and a U-Net adapter.
"before" reproduces what the code did until issue #35 with today's functions: `load_pipeline` in fp32 on the CPU
(then the cast to bf16 that `prepare_pipeline` made for a GPU), and check and fuse on an fp32 CPU copy of the
pipeline. "after" calls today's `load_pipeline(dtype=bf16)`, `check_adapters` and `fuse_adapter_files`; both fuse
outputs are compared tensor for tensor. A case whose fp32 copy would not fit the memory available is skipped.
Prints one JSON object per case (peak and after-imports resident GiB) and appends them to --json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.timing import append_json_lines

GIB = 2**30
MODELS = {"sdxl": "texforce/sdxl-random", "sd15": "texforce/sd15-random", "tiny": "texforce/tiny-sdxl-random"}
CASES = ("load before", "load after", "check before", "check after", "fuse before", "fuse after")


def resident_gib() -> float:
    """This process's resident set now (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / GIB
    raise RuntimeError("no VmRSS in /proc/self/status")


def available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024 / GIB
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def prepare(model: str, work: Path) -> int:
    """Save the random model (bf16) and its adapters into `work`; return its parameter count."""
    from texforce.adapters.files import save_adapters
    from texforce.bases.loading import add_lora, load_pipeline
    from texforce.config import LoraConfig

    if (work / "pipe" / "model_index.json").is_file():
        return json.loads((work / "parameters.json").read_text())
    torch.set_default_dtype(torch.bfloat16)  # built in bf16: half the memory of building in fp32
    pipe = load_pipeline(MODELS[model])
    torch.set_default_dtype(torch.float32)
    parameters = sum(p.numel() for name in ("unet", "vae", "text_encoder", "text_encoder_2")
                     for p in getattr(pipe, name).parameters())  # fmt: skip
    pipe.save_pretrained(work / "pipe")
    modules = {"text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2, "unet": pipe.unet}
    for name, module in modules.items():
        targets = ["to_q", "to_k", "to_v", "to_out.0"] if name == "unet" else LoraConfig().target_modules
        add_lora(module, LoraConfig(target_modules=targets), seed=0)
    for seed in (1, 2):  # two adapters: the same A matrices, their own random B
        generator = torch.Generator().manual_seed(seed)
        for module in modules.values():
            for name, param in module.named_parameters():
                if "lora_B" in name:
                    param.data.normal_(generator=generator)
        saved = modules if seed == 1 else {k: v for k, v in modules.items() if k != "unet"}
        save_adapters(work / f"adapter{seed}", saved, str(work / "pipe"))
    (work / "parameters.json").write_text(json.dumps(parameters))
    return parameters


def run_case(case: str, work: Path) -> None:
    """One case, in this (fresh) process; prints its JSON line."""
    from texforce.adapters.files import fuse_adapter_files, fuse_adapters, load_text_adapters, save_adapters
    from texforce.bases.loading import load_pipeline
    from texforce.observe.evaluation import AdapterSetup, check_adapters, load_setup

    folder, setup = str(work / "pipe"), AdapterSetup("a", work / "adapter1", work / "adapter1")
    imports = resident_gib()
    if case == "load before":
        load_pipeline(folder, dtype=torch.float32).to(dtype=torch.bfloat16)
    elif case == "load after":
        load_pipeline(folder, dtype=torch.bfloat16)
    elif case == "check before":
        load_setup(load_pipeline(folder, dtype=torch.float32), setup, folder, "check0")
    elif case == "check after":
        check_adapters(folder, [setup])
    elif case == "fuse before":
        pipe, names = load_pipeline(folder, dtype=torch.float32), ["adapter0", "adapter1"]
        for name, adapter in zip(names, ("adapter1", "adapter2"), strict=True):
            covered = load_text_adapters(pipe, work / adapter, name, folder)
        for component in covered:
            fuse_adapters(getattr(pipe, component), names, [0.5, 0.5])
        fused = {component: getattr(pipe, component) for component in covered}
        save_adapters(work / "fused before", fused, folder, "fused", type(pipe))
    else:
        fuse_adapter_files(folder, [work / "adapter1", work / "adapter2"], [0.5, 0.5], work / "fused after")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB
    print(json.dumps({"case": case, "peak_gib": round(peak, 2), "after_imports_gib": round(imports, 2)}))


def same_fused(work: Path) -> bool:
    """Both fuse outputs hold the same tensors (every file the old fuse wrote)."""
    from safetensors.torch import load_file

    before = sorted(p.relative_to(work / "fused before") for p in (work / "fused before").rglob("*.safetensors"))
    after = {p.relative_to(work / "fused after") for p in (work / "fused after").rglob("*.safetensors")}
    if not set(before) <= after:  # today's fuse also writes the UI file (<name>.safetensors)
        return False
    for relative in before:
        a, b = load_file(work / "fused before" / relative), load_file(work / "fused after" / relative)
        if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="sdxl")
    parser.add_argument("--work", type=Path, help="keep the saved model here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="append the results to this JSON-lines file")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # one case, in a child process
    args = parser.parse_args()
    if args.case is not None:
        run_case(args.case, args.work)
        return
    with tempfile.TemporaryDirectory() as temporary:
        work = args.work or Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        parameters = prepare(args.model, work)
        results = []
        for case in CASES:
            needs = parameters * 4 * 1.2 / GIB if "before" in case else 0  # an fp32 copy, and some
            if needs > available_gib():
                result = {"case": case, "skipped": f"needs ~{needs:.0f} GiB, {available_gib():.0f} available"}
            else:
                command = [sys.executable, "-m", "benchmarks.host_memory", "--case", case, "--work", str(work)]
                output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
                result = json.loads(output.strip().splitlines()[-1])
            result |= {"model": args.model, "parameters": parameters}
            print(json.dumps(result), flush=True)
            results.append(result)
        if all(not r.get("skipped") for r in results if r["case"].startswith("fuse")):
            print(json.dumps({"fuse outputs identical": same_fused(work)}))
    if args.json is not None:
        append_json_lines(args.json, results)


if __name__ == "__main__":
    main()
