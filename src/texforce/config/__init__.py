"""The config sections every run shares, whatever its algorithm: the base model, the LoRA adapters, the sampler,
the training loop, prompts, evaluation, logging and several processes.

Defaults, help texts and allowed values live here and only here, in each key's `option(...)` (they follow trl's
DDPOConfig, which the official TexForce code uses). An algorithm's own sections (`ddpo`, `advantage`, `backprop`)
live beside it in `texforce.algorithms`; `texforce.run.run_config.RunConfig` puts them together, loads and validates.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from texforce.config.schema import option

TEXT_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
UNET_LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
T5_LORA_TARGETS = ["q", "k", "v", "o"]  # T5's attention; its feed-forward is wi_0, wi_1, wo


@dataclass
class ModelConfig:
    """Which base pipeline to load and how to hold its frozen weights."""

    base: str = option(
        "texforce/tiny-random",
        "a hub id, a local diffusers folder, or a built-in (texforce/world, texforce/tiny-random, …)",
    )
    revision: str | None = option(None, "hub revision (branch, tag or commit) of `base`")
    dtype: str = option(
        "bf16",
        "frozen weights on a GPU (on the CPU fp32, unless model.half_on_cpu); training takes bf16 or fp32",
        choices=("bf16", "fp16", "fp32"),
    )
    half_on_cpu: bool = option(
        False,
        "apply model.dtype on the CPU too: slow but exact emulation of the GPU's half-precision path (for tests)",
    )
    device: str = option("auto", "auto (the GPU when there is one), cpu, cuda or cuda:N")
    attention: str = option(
        "sdpa",
        "sdpa: torch's scaled_dot_product_attention; math: the plain softmax(QKᵀ)V reference",
        choices=("sdpa", "math"),
    )
    channels_last: bool = option(False, "U-Net and VAE weights in channels-last memory format (faster on GPUs)")
    compile: bool = option(False, "torch.compile the U-Net (compiled at its first call: minutes for SD on a GPU)")
    max_sequence_length: int | None = option(
        None,
        "T5 tokens per prompt (SD3, FLUX; zeros for an SD3 without T5); unset: the pipeline's default (SD3 256, "
        "FLUX 512; none for texforce/world-flow, built without T5)",
        bounds=">= 1",
    )


@dataclass
class LoraConfig:
    """One LoRA adapter: where it goes, its size and its learning rate."""

    use: bool = option(True, "train this adapter")
    rank: int = option(16, "LoRA rank r", bounds=">= 1")
    alpha: float = option(16.0, "LoRA alpha: the update is scaled by alpha / rank", bounds="> 0")
    init: str = option(
        "gaussian", "gaussian (the paper's) or default (peft's kaiming-A, zero-B)", choices=("gaussian", "default")
    )
    target_modules: list[str] = option(
        help="modules that get an adapter (non-empty)", factory=lambda: list(TEXT_LORA_TARGETS)
    )
    learning_rate: float = option(3e-4, "AdamW learning rate of this adapter", bounds="> 0")


@dataclass
class TextLoraConfig(LoraConfig):
    """The text encoders' adapter (TexForce's): on every CLIP text encoder, and on T5 (SD3, FLUX) when asked."""

    t5: bool = option(False, "also train an adapter on the T5 encoder of SD3 / FLUX (same rank, alpha and lr)")
    t5_target_modules: list[str] = option(
        help="T5 modules that get an adapter (non-empty; add wi_0, wi_1, wo for the feed-forward)",
        factory=lambda: list(T5_LORA_TARGETS),
    )


@dataclass
class UNetLoraConfig(LoraConfig):
    """The optional U-Net adapter (for comparison with, or joint training beside, the text encoder's)."""

    use: bool = option(False, "train a U-Net adapter (alone, or jointly with text_lora)")
    target_modules: list[str] = option(
        help="U-Net attention projections that get an adapter (non-empty)", factory=lambda: list(UNET_LORA_TARGETS)
    )


@dataclass
class TextLora2Config:
    """The second CLIP text encoder (SDXL's and SD3's OpenCLIP bigG): `text_lora` applies to it too, except what is
    set here."""

    rank: int | None = option(None, "rank of the second encoder's adapter; unset: text_lora.rank", bounds=">= 1")
    alpha: float | None = option(None, "its alpha; unset: text_lora.alpha", bounds="> 0")
    target_modules: list[str] | None = option(None, "its target modules (non-empty); unset: text_lora's")


@dataclass
class SampleConfig:
    """The sampler (DDIM; flow models: Euler, with Flow-GRPO's SDE for DDPO) that generates the images (and, for
    DDPO, the recorded chains) each epoch learns from."""

    num_steps: int = option(50, "sampler steps per image (DDIM; flow models: Euler)", bounds=">= 1")
    eta: float = option(
        1.0,
        "DDIM eta (flow models: the SDE's noise level): > 0 is stochastic (DDPO needs it), 0 deterministic",
        bounds=">= 0",
    )
    guidance_scale: float = option(7.5, "classifier-free guidance scale (<= 1: no guidance)", bounds=">= 0")
    negative_prompt: str = option("", "the negative prompt of classifier-free guidance")
    resolution: int | None = option(
        None, "image size in pixels (a multiple of 8; SD3 and FLUX: of 16); unset: the model's native size"
    )
    batch_size_per_device: int = option(8, "images per sampling batch, per process", bounds=">= 1")
    num_batches_per_epoch: int = option(4, "sampling batches per epoch, per process", bounds=">= 1")


@dataclass
class TrainConfig:
    """What every algorithm shares: which algorithm, epochs, micro-batches, the optimizer and its schedule."""

    algorithm: str = option("ddpo", "the training algorithm (texforce.algorithms.ALGORITHMS)")
    num_epochs: int = option(100, "epochs of sampling and training", bounds=">= 0")
    batch_size_per_device: int = option(4, "samples per micro-batch of the update, per process", bounds=">= 1")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step", bounds=">= 1")
    max_grad_norm: float = option(1.0, "gradient clipping norm", bounds="> 0")
    adam_beta1: float = option(0.9, "AdamW beta1", bounds="[0, 1)")
    adam_beta2: float = option(0.999, "AdamW beta2", bounds="[0, 1)")
    adam_weight_decay: float = option(1e-4, "AdamW weight decay", bounds=">= 0")
    adam_epsilon: float = option(1e-8, "AdamW epsilon", bounds="> 0")
    lr_schedule: str = option("constant", "learning rate after the warm-up", choices=("constant", "cosine"))
    lr_warmup_steps: int = option(0, "optimizer steps of linear warm-up", bounds=">= 0")
    ema_decay: float = option(
        0.0,
        "0: off; else the final evaluation and exported adapters are an exponential moving average of the trained "
        "ones with this decay, updated after every optimizer step",
        bounds="[0, 1)",
    )
    use_lora_for_negative: bool = option(True, "encode the negative prompt through the LoRA text encoder too")
    max_nonfinite_fraction: float = option(
        0.1, "NaN/inf rewards are dropped; above this fraction of an epoch the run stops", bounds="[0, 1)"
    )


@dataclass
class PromptConfig:
    """Training and held-out evaluation prompts: a built-in set name or a file (.txt / .json)."""

    train: str = option("animals", "training prompts: a built-in set (animals, world, hand, …) or a .txt/.json file")
    eval: str | None = option(None, "held-out prompts, the same kinds; unset: the held-out part of the training set")
    train_styles: list[str] = option(
        help="styles the training prompts are written in, each drawn alike (prompts/styles.py: `plain`, "
        "`engineered`, … or a template with {prompt}); the model sees the styled text, the reward judges the plain "
        "prompt",
        factory=lambda: ["plain"],
    )


@dataclass
class EvalConfig:
    """Fixed-seed evaluation before and after training (deterministic DDIM, the sampler's steps and guidance)."""

    num_prompts: int = option(8, "prompts of each split (training, held-out) to judge", bounds=">= 0")
    num_seeds: int = option(2, "seeds per prompt", bounds=">= 1")
    seed: int = option(1234, "the first seed (then seed + 1, …)")
    reward: str | None = option(None, "the judge, a reward spec like `reward`; unset: the training reward")
    styles: list[str] = option(
        help="prompt styles the held-out prompts are also judged in (prompts/styles.py: `engineered`, `paraphrase`, "
        "…, or a template with {prompt}); each image is judged against the plain prompt",
        factory=lambda: ["plain"],
    )


@dataclass
class LogConfig:
    """Where metrics go besides `metrics.jsonl`: TensorBoard (RUN/tensorboard) and, optionally, wandb."""

    tensorboard: bool = option(True, "write TensorBoard logs to RUN/tensorboard")
    wandb: bool = option(False, "log to Weights & Biases (needs `pip install wandb`)")
    wandb_project: str = option("texforce", "the wandb project")


@dataclass
class DistributedConfig:
    """Several processes (`accelerate launch`, `torchrun`): how long a process waits for the others."""

    timeout_minutes: float = option(
        120.0,
        "how long a collective (a gather, the gradient all-reduce, a barrier while the main process writes a "
        "checkpoint) may wait for the other processes before the run is stopped; torch's NCCL default is 10",
        bounds="> 0",
    )


@dataclass
class SharedConfig:
    """The keys and sections every run has; `texforce.run.run_config.RunConfig` adds each algorithm's own."""

    seed: int = option(0, "seed of the adapters' initialisation, the prompts, the noise and the shuffles")
    output_dir: str = option("runs", "where run folders are made")
    run_name: str | None = option(None, "the run folder's name; unset: a timestamp")
    reward: str = option(
        "jpeg_compressibility", "a reward or a weighted sum (`imagereward:1+aesthetic:0.1`); see `texforce rewards`"
    )
    checkpoint_every: int = option(1, "epochs between checkpoints", bounds=">= 1")
    keep_checkpoints: int = option(2, "checkpoints kept (the oldest go)", bounds=">= 1")
    model: ModelConfig = option(factory=ModelConfig)
    text_lora: TextLoraConfig = option(factory=TextLoraConfig)
    text_lora_2: TextLora2Config = option(factory=TextLora2Config)
    unet_lora: UNetLoraConfig = option(factory=UNetLoraConfig)
    sample: SampleConfig = option(factory=SampleConfig)
    train: TrainConfig = option(factory=TrainConfig)
    prompts: PromptConfig = option(factory=PromptConfig)
    eval: EvalConfig = option(factory=EvalConfig)
    log: LogConfig = option(factory=LogConfig)
    distributed: DistributedConfig = option(factory=DistributedConfig)

    def text_lora_of(self, encoder: int) -> LoraConfig:
        """The adapter of text encoder `encoder` (0; SDXL's second is 1): `text_lora`, with `text_lora_2`'s overrides
        for the second."""
        if encoder == 0:
            return self.text_lora
        overrides = {k: v for k, v in dataclasses.asdict(self.text_lora_2).items() if v is not None}
        return dataclasses.replace(self.text_lora, **overrides)

    def t5_lora(self) -> LoraConfig:
        """The adapter of a T5 encoder (SD3's, FLUX's): `text_lora` on `text_lora.t5_target_modules`."""
        return dataclasses.replace(self.text_lora, target_modules=list(self.text_lora.t5_target_modules))

    @property
    def samples_per_epoch_per_device(self) -> int:
        """Images sampled per epoch by each process."""
        return self.sample.batch_size_per_device * self.sample.num_batches_per_epoch


def to_dict(config: Any) -> dict[str, Any]:
    """A plain, YAML-serialisable dict of a config."""
    return dataclasses.asdict(config)
