"""`model.attention`, `model.channels_last` and `model.compile` compute what the plain path computes: the same
sampled chains and the same gradients, DDPO and direct backprop, on the tiny model on the CPU."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_overrides

from texforce.bases.loading import attention_kernels
from texforce.errors import TexforceError
from texforce.observe.runlog import RunLogger
from texforce.run.run_config import load_config
from texforce.run.trainer import Trainer

PROMPTS = ["a cat", "a dog", "a red fox", "a small bird"]
# relative error ‖a − b‖ / ‖b‖ in fp32 on the CPU: chains and images land near 1e-6, gradients (sums over steps of
# small differences) near 1e-5
OUTPUT_TOLERANCE, GRADIENT_TOLERANCE = 1e-5, 1e-4


def _trainer(tiny_model_dir, tmp_path, **options) -> Trainer:
    """Text and U-Net LoRA on the tiny model, with `options` (model.* and the algorithm's keys)."""
    extra = {"unet_lora__use": True, **options}
    config = load_config(None, tiny_overrides(tiny_model_dir, tmp_path / "runs", **extra))
    trainer = Trainer(config, RunLogger(tmp_path / "log", 1, 1, quiet=True))
    trainer.setup()
    return trainer


def _outputs(trainer: Trainer) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """What a training step computes: DDPO's chains, or backprop's images; and the LoRA gradients."""
    generator = torch.Generator().manual_seed(0)
    if trainer.config.train.algorithm == "backprop":
        _, images = trainer.algorithm.train_micro_batch(PROMPTS[:2], generator, 1, 0)
        outputs = [images]
    else:
        trajectory = trainer.policy.sample(PROMPTS, generator)
        rows, steps = torch.tensor([0, 2]), torch.tensor([[0, 2], [3, 1]])
        trainer.algorithm.train_micro_batch(trajectory, torch.tensor([1.0, -0.5, 0.3, -1.0]), rows, steps)
        outputs = [trajectory.latents, trajectory.log_probs, trajectory.images]
    return outputs, [p.grad for p in trainer.trainable]


def _assert_close(mine: tuple[list[torch.Tensor], list[torch.Tensor]], plain: tuple[list, list]) -> None:
    for values, reference, tolerance in zip(mine, plain, (OUTPUT_TOLERANCE, GRADIENT_TOLERANCE), strict=True):
        assert len(values) == len(reference) > 0
        for a, b in zip(values, reference, strict=True):
            assert float((a - b).norm() / b.norm().clamp(min=1e-12)) < tolerance


ALGORITHMS = {
    "ddpo": {},
    "backprop": {"train__algorithm": "backprop", "reward": "world_clipscore", "train__batch_size_per_device": 2},
}


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
@pytest.mark.parametrize("option", [{"model__attention": "math"}, {"model__channels_last": True}])
def test_option_matches_the_plain_path(option, algorithm, tiny_model_dir, tmp_path):
    plain = _outputs(_trainer(tiny_model_dir, tmp_path / "plain", **ALGORITHMS[algorithm]))
    other = _outputs(_trainer(tiny_model_dir, tmp_path / "other", **ALGORITHMS[algorithm], **option))
    _assert_close(other, plain)


def test_compiled_unet_matches_the_plain_path(tiny_model_dir, tmp_path, monkeypatch):
    """Traced by dynamo and AOTAutograd (`aot_eager`: the graphs inductor would compile, run by eager kernels; inductor
    itself takes minutes on the CPU, and the GPU benchmark checks its output against the plain U-Net's)."""
    monkeypatch.setattr("texforce.bases.loading.COMPILE_BACKEND", "aot_eager")
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    plain = _outputs(_trainer(tiny_model_dir, tmp_path / "plain"))
    compiled = _outputs(_trainer(tiny_model_dir, tmp_path / "compiled", model__compile=True))
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1, "the U-Net was not compiled"
    _assert_close(compiled, plain)
    torch._dynamo.reset()


@pytest.mark.parametrize("attention, calls", [("sdpa", True), ("math", False)])
def test_sdpa_is_what_runs(attention, calls, tiny_model_dir, tmp_path, monkeypatch):
    count = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        count.append(1)
        return sdpa(*args, **kwargs)

    trainer = _trainer(tiny_model_dir, tmp_path, model__attention=attention)
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    trainer.policy.sample(PROMPTS[:1], torch.Generator().manual_seed(0))
    assert bool(count) == calls
    expected = ("AttnProcessor2_0", "sdpa") if attention == "sdpa" else ("AttnProcessor", "eager")
    kernels = attention_kernels(trainer.policy.pipe)
    assert kernels["unet"] == expected[0] and kernels["text_encoder"] == expected[1]


def test_bad_attention_is_one_line():
    with pytest.raises(TexforceError, match=r"^model\.attention must be sdpa or math, got 'flash'$"):
        load_config(None, ["model.attention=flash"])
