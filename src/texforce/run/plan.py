"""`texforce plan`: the GPU and host memory of a config's run, measured on the meta device before any GPU is used.

The config's pipeline is built on the meta device (`bases.meta`: the built-in, or the published architecture of
the base's family) with its LoRA adapters, in the config's GPU dtype. Weights are counted per dtype, AdamW keeps two
fp32 moments per trainable weight (and an EMA one more). Each phase of a run (one sampling call with its decode, one
update micro-batch of DDPO or one direct-backprop step, one evaluation batch) then runs on meta tensors under
`run.memory.LiveMemory`, forward and backward, with per-block checkpointing as configured and the attention memory
of a GPU kernel: the most bytes alive at once is the phase's peak. Each phase runs at its configured batch and at
twice it, so the bytes per sample give the largest batch that fits.

Left out, and said so in the output: the CUDA context, library workspaces and allocator fragmentation (a fixed
`RESERVE_GIB` is added before the verdicts); the sampler's own arithmetic on the latents (a few latent-sized tensors);
rewards that run on the CPU (the world's judges, the detectors, JPEG). Host memory is the pipeline as
`load_pipeline` reads it (straight into its frozen dtype) or the run's data on the CPU, whichever is larger,
without the Python and CUDA runtime itself.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import CLIPConfig, CLIPModel

from texforce.algorithms.policy import Policy
from texforce.bases.loading import DTYPES
from texforce.bases.meta import META, build_meta_pipeline
from texforce.rewards import parse_reward_spec
from texforce.rewards.hps import build_vit_h14_config
from texforce.rewards.imagereward import ImageRewardModel, build_blip_large_configs
from texforce.run.memory import LiveMemory, gpu_attention
from texforce.run.run_config import RunConfig

GIB = 2**30
GPU_SIZES = (24, 40, 80)  # the GPU classes judged, GiB as the cards report them (an "80 GB" H100: 80 GiB)
RESERVE_GIB = 1.5  # CUDA context, cuBLAS/cuDNN workspaces, allocator fragmentation: not traced, kept free
PROMPT = "a photo of an animal"
REWARD_IMAGE = 224  # the GPU rewards' input side (BLIP ViT-L/16, CLIP ViT-L/14 and ViT-H/14)
CLIP_L14 = CLIPConfig(  # openai/clip-vit-large-patch14's config.json: CLIPScore's and the aesthetic head's tower
    text_config={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
    vision_config={"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
                   "image_size": 224, "patch_size": 14},
    projection_dim=768,
)  # fmt: skip
GPU_REWARDS: dict[str, Callable[[], torch.nn.Module]] = {  # rewards that run a model on the GPU, as architectures
    "imagereward": lambda: ImageRewardModel(*build_blip_large_configs()),
    "hpsv2": lambda: CLIPModel(build_vit_h14_config()),
    "hpsv2_1": lambda: CLIPModel(build_vit_h14_config()),
    "pickscore": lambda: CLIPModel(build_vit_h14_config()),
    "clipscore": lambda: CLIPModel(CLIP_L14),
    "aesthetic": lambda: CLIPModel(CLIP_L14),
}


@dataclass
class Phase:
    """One phase's peak bytes above the run's resident memory, at `batch`, and its growth per sample."""

    name: str
    batch: int
    batch_key: str  # the config key that sets `batch`
    peak_bytes: int
    bytes_per_sample: float


@dataclass
class MemoryPlan:
    """What one process of a run holds on its GPU and in host memory."""

    base: str
    architecture: str
    weights: dict[str, dict[str, int]]  # component → dtype → bytes (frozen weights and LoRA)
    trainable_parameters: int
    optimizer_bytes: int
    phases: list[Phase]
    host_parts: dict[str, int]
    notes: list[str] = field(default_factory=list)

    @property
    def resident_bytes(self) -> int:
        """Weights and optimizer state: on the GPU for the whole run."""
        return sum(b for dtypes in self.weights.values() for b in dtypes.values()) + self.optimizer_bytes

    @property
    def gpu_peak_bytes(self) -> int:
        return self.resident_bytes + max(phase.peak_bytes for phase in self.phases)

    @property
    def host_bytes(self) -> int:
        return max(self.host_parts.values())

    def fits(self, gib: float) -> bool:
        """Whether the peak and `RESERVE_GIB` fit a GPU of `gib`."""
        return self.gpu_peak_bytes + RESERVE_GIB * GIB <= gib * GIB

    def largest_batches(self, gib: float = 80) -> dict[str, int]:
        """The largest value of each batch key whose phases all fit a GPU of `gib` (0: not even 1)."""
        room = (gib - RESERVE_GIB) * GIB - self.resident_bytes
        largest: dict[str, int] = {}
        for p in self.phases:
            fixed = p.peak_bytes - p.bytes_per_sample * p.batch
            most = int((room - fixed) // p.bytes_per_sample) if p.bytes_per_sample > 0 else 10**6
            largest[p.batch_key] = max(0, min(largest.get(p.batch_key, most), most))
        return largest

    def verdict(self) -> str:
        """`fits 24/40/80 GB` for the sizes that fit, or `needs more than 80 GB`."""
        sizes = [str(size) for size in GPU_SIZES if self.fits(size)]
        return f"fits {'/'.join(sizes)} GB" if sizes else f"needs more than {GPU_SIZES[-1]} GB"

    def to_json(self) -> dict:
        return {
            **dataclasses.asdict(self),
            "resident_gib": self.resident_bytes / GIB,
            "gpu_peak_gib": self.gpu_peak_bytes / GIB,
            "host_gib": self.host_bytes / GIB,
            "reserve_gib": RESERVE_GIB,
            "fits": {f"{size} GB": self.fits(size) for size in GPU_SIZES},
            "largest_batches_80gb": self.largest_batches(),
            "verdict": self.verdict(),
        }


def _weights(policy: Policy, rewards: dict[str, torch.nn.Module]) -> dict[str, dict[str, int]]:
    modules = {"denoiser": policy.denoiser, "vae": policy.vae, **policy.text_encoders}
    modules |= {f"reward {name}": module for name, module in rewards.items()}
    weights: dict[str, dict[str, int]] = {}
    for name, module in modules.items():
        sizes: dict[str, int] = defaultdict(int)
        seen = set()
        for tensor in [*module.parameters(), *module.buffers()]:
            if id(tensor) not in seen:  # tied weights once
                seen.add(id(tensor))
                sizes[str(tensor.dtype).removeprefix("torch.")] += tensor.numel() * tensor.element_size()
        weights[name] = dict(sizes)
    return weights


def _measure(run: Callable[[int], None], batch: int) -> tuple[int, float]:
    """Peak live bytes of `run(batch)` and the bytes each further sample adds (from a run at 2 × batch)."""
    peaks = []
    for size in (batch, 2 * batch):
        memory = LiveMemory()
        with gpu_attention(), memory:
            run(size)
        peaks.append(memory.peak)
    return peaks[0], (peaks[1] - peaks[0]) / batch


def _latents(policy: Policy, batch: int) -> torch.Tensor:
    return torch.randn((batch, *policy.latent_shape), device=META)  # the chain is fp32; the denoiser casts its input


def _timesteps(batch: int) -> torch.Tensor:
    return torch.full((batch,), 500.0, device=META)


@torch.no_grad()
def _sampling(policy: Policy, config: RunConfig, batch: int, chain: bool) -> None:
    """One sampling call: the prompts' conditioning, (DDPO) the recorded chain, one guided denoiser call, the decode of
    the batch's first chunk (`decode_latents`' 16)."""
    predict = policy.conditioned_predictor(policy.tokenize([PROMPT] * batch))
    latents = _latents(policy, batch)
    steps = config.sample.num_steps
    chain = (  # (B, T+1, C, h, w) and the log-probs (B, T), alive to the end of the call
        [latents.new_empty((batch, steps + 1, *latents.shape[1:])), torch.empty((batch, steps), device=META)]
        if chain
        else []
    )
    output = predict(latents, _timesteps(batch))
    del output
    policy.vae.decode(latents[:16].to(policy.vae.dtype))
    del chain


def _ddpo_update(policy: Policy, config: RunConfig, batch: int) -> None:
    """`DDPO.train_micro_batch` on one call of `ddpo.timesteps_per_call` steps: the conditioning with its graph, the
    guided denoiser call on k × batch rows into the conditioning's leaves (and the frozen policy's call of the KL
    penalty), then the backward through the denoiser and through the text encoders."""
    ddpo = config.ddpo
    k = min(ddpo.timesteps_per_call, ddpo.num_train_timesteps(config.sample.num_steps))
    embeds = policy.encode(policy.tokenize([PROMPT] * batch))
    negative = policy.negative_embeds(batch) if ddpo.use_cfg and policy.uses_guidance else None
    roots = [e for e in (embeds, negative) if e is not None]
    leaves = [e.map(lambda t: t.detach().requires_grad_(t.requires_grad)) for e in roots]
    stacked = [e.map(lambda t: t.repeat(k, *[1] * (t.ndim - 1))) for e in leaves]
    latents, timesteps = _latents(policy, k * batch), _timesteps(k * batch)
    output = policy.noise_predictor(stacked[0], stacked[1] if negative is not None else None)(latents, timesteps)
    if ddpo.kl_coef > 0:
        with torch.no_grad(), policy.frozen():
            policy.noise_predictor(stacked[0], stacked[1] if negative is not None else None)(latents, timesteps)
    output.float().square().mean().backward()
    pairs = [(t, leaf.grad) for e, f in zip(roots, leaves, strict=True) for t, leaf in zip(e.tensors(), f.tensors(),
             strict=True) if leaf.grad is not None]  # fmt: skip
    if pairs:
        torch.autograd.backward(*zip(*pairs, strict=True))


def _backprop_step(policy: Policy, config: RunConfig, batch: int, rewards: dict[str, torch.nn.Module]) -> None:
    """`RewardBackprop.train_micro_batch`: the last `backprop.num_grad_steps` denoiser calls with their graph, the
    VAE decode with its graph, the GPU rewards on the images at their input size, the backward into the LoRA."""
    predict = policy.conditioned_predictor(policy.tokenize([PROMPT] * batch))
    latents = _latents(policy, batch)
    for _ in range(config.backprop.num_grad_steps):
        latents = latents + predict(latents, _timesteps(batch)).to(latents.dtype)
    images = policy.vae.decode(latents.to(policy.vae.dtype)).sample.float()
    loss = images.mean()
    for model in rewards.values():
        pixels = torch.nn.functional.interpolate(images, size=REWARD_IMAGE).to(next(model.parameters()).dtype)
        loss = loss + _reward_output(model, pixels).float().mean()
    loss.backward()


def _reward_output(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    if isinstance(model, ImageRewardModel):
        ids = torch.zeros((len(pixels), 35), dtype=torch.long, device=META)
        return model(pixels, ids, torch.ones_like(ids))
    return model.get_image_features(pixel_values=pixels)


def _gpu_rewards(config: RunConfig, dtype: torch.dtype) -> tuple[dict[str, torch.nn.Module], list[str]]:
    """The GPU reward models of the training and judging rewards on meta, and what is not counted."""
    names = {name for spec in (config.reward, config.eval.reward or config.reward) for name, _ in
             parse_reward_spec(spec)}  # fmt: skip
    models = {}
    for name in sorted(names & GPU_REWARDS.keys()):
        with META:
            models[name] = GPU_REWARDS[name]().to(dtype).requires_grad_(False).eval()
    others = sorted(names - GPU_REWARDS.keys())
    notes = [f"rewards on the CPU or of a few MB, not counted: {', '.join(others)}"] if others else []
    return models, notes


def plan_memory(config: RunConfig) -> MemoryPlan:
    """The memory plan of one process of a run of `config` (one GPU)."""
    pipe, architecture = build_meta_pipeline(config.model.base)
    policy = Policy(config, META, pipe)
    dtype = DTYPES[config.model.dtype]
    rewards, notes = _gpu_rewards(config, dtype)
    algorithm = config.train.algorithm
    if algorithm == "ddpo" and config.ddpo.gradient_checkpointing:
        policy.enable_gradient_checkpointing()
    if algorithm == "backprop" and config.backprop.gradient_checkpointing:
        policy.enable_gradient_checkpointing(vae=True)
    trainable = sum(p.numel() for p in policy.trainable)
    optimizer = trainable * 4 * (3 if config.train.ema_decay > 0 else 2)  # AdamW's two fp32 moments (+ the EMA)
    s, t = config.sample, config.train
    phases = []
    if algorithm == "ddpo":
        phases.append(
            Phase(
                "sampling",
                s.batch_size_per_device,
                "sample.batch_size_per_device",
                *_measure(lambda b: _sampling(policy, config, b, chain=True), s.batch_size_per_device),
            )
        )
        phases.append(
            Phase(
                "update micro-batch",
                t.batch_size_per_device,
                "train.batch_size_per_device",
                *_measure(lambda b: _ddpo_update(policy, config, b), t.batch_size_per_device),
            )
        )
    elif algorithm == "backprop":
        phases.append(
            Phase(
                "backprop step",
                t.batch_size_per_device,
                "train.batch_size_per_device",
                *_measure(lambda b: _backprop_step(policy, config, b, rewards), t.batch_size_per_device),
            )
        )
    else:
        notes.append(f"train.algorithm {algorithm}: no memory model of its update; sampling and evaluation only")
    evaluation = max(1, min(config.eval.num_prompts, s.batch_size_per_device))
    phases.append(Phase("evaluation batch", evaluation, "sample.batch_size_per_device",
                        *_measure(lambda b: _sampling(policy, config, b, chain=False), evaluation)))  # fmt: skip
    weights = _weights(policy, rewards)
    return MemoryPlan(
        config.model.base, architecture, weights, trainable, optimizer, phases,
        _host_parts(policy, config, weights), notes,
    )  # fmt: skip


def _host_parts(policy: Policy, config: RunConfig, weights: dict[str, dict[str, int]]) -> dict[str, int]:
    """Host bytes of one process: the pipeline as `load_pipeline` reads it, in its frozen dtype (and the rewards), or
    DDPO's epoch on the CPU (the fp32 chains, log-probs and images of its samples), whichever is larger."""
    parts = {"pipeline as loaded": sum(size for dtypes in weights.values() for size in dtypes.values())}
    if config.train.algorithm == "ddpo":
        n, steps = config.samples_per_epoch_per_device, config.sample.num_steps
        c, h, w = policy.latent_shape
        side = h * policy.pipe.vae_scale_factor
        chain = n * (steps + 1) * c * h * w * 4 + n * steps * 4
        parts["epoch's chains and images"] = chain + n * 3 * side * side * 4
    return parts


HEADER_PREFIX = "# Memory plan (texforce plan, one GPU): "


def header_line(plan: MemoryPlan) -> str:
    """The line a shipped config's header states its plan in."""
    return (
        f"{HEADER_PREFIX}peak {plan.gpu_peak_bytes / GIB:.1f} GiB GPU, host {plan.host_bytes / GIB:.1f} GiB; "
        f"{plan.verdict()}"
    )


def with_header(text: str, line: str) -> str:
    """A config's YAML text with its plan line replaced, or added at the end of its leading comment block."""
    lines = text.splitlines()
    kept = [old for old in lines if not old.startswith(HEADER_PREFIX)]
    end = next((i for i, old in enumerate(kept) if not old.startswith("#")), len(kept))
    return "\n".join([*kept[:end], line, *kept[end:]]) + "\n"


def format_plan(plan: MemoryPlan) -> str:
    """The plan as `texforce plan` prints it."""
    gib = lambda size: f"{size / GIB:7.2f} GiB"  # noqa: E731
    out = [f"{plan.base}: {plan.architecture}", "", "resident on the GPU"]
    for name, dtypes in plan.weights.items():
        parts = ", ".join(f"{d} {size / GIB:.2f}" for d, size in sorted(dtypes.items()) if size)
        out.append(f"  {name:<24}{gib(sum(dtypes.values()))}  ({parts} GiB)")
    out.append(f"  {'optimizer state':<24}{gib(plan.optimizer_bytes)}  (AdamW, fp32, on "
               f"{plan.trainable_parameters:,} trainable LoRA weights)")  # fmt: skip
    out += ["", "each phase's peak above that (traced on the meta device, forward and backward)"]
    for p in plan.phases:
        out.append(f"  {p.name:<24}{gib(p.peak_bytes)}  at {p.batch_key}={p.batch}; "
                   f"+{p.bytes_per_sample / GIB:.3f} GiB per further sample")  # fmt: skip
    largest = ", ".join(f"{key}={value}" for key, value in plan.largest_batches().items())
    out += [
        "",
        f"peak per GPU      {plan.gpu_peak_bytes / GIB:7.2f} GiB  (+ {RESERVE_GIB} GiB kept for the CUDA context, "
        "workspaces and fragmentation)",
        f"peak per process  {plan.host_bytes / GIB:7.2f} GiB host  ("
        + ", ".join(f"{k} {v / GIB:.2f} GiB" for k, v in plan.host_parts.items())
        + "; without the Python/CUDA runtime)",
        "verdict           "
        + "; ".join(f"{size} GB {'fits' if plan.fits(size) else 'too small'}" for size in GPU_SIZES),
        f"largest on 80 GB  {largest}",
    ]
    return "\n".join(out + [f"note: {note}" for note in plan.notes])
