"""Per-block gradient checkpointing (the models' own `enable_gradient_checkpointing()`): the gradient into the
text-encoder LoRA is the same with and without it, for direct backprop (denoiser and VAE decoder) and for DDPO's
update (denoiser), on a U-Net and on a FLUX transformer, while the blocks really are recomputed."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_overrides
from test_trainer import first_batch

from texforce.observe.runlog import RunLogger
from texforce.run.run_config import load_config
from texforce.run.trainer import Trainer

FLUX = {"model__base": "texforce/tiny-flux-random", "sample__resolution": 32, "sample__guidance_scale": 3.5}
BACKPROP = {"train__algorithm": "backprop", "reward": "world_clipscore", "sample__eta": 0.0}


def make_trainer(model_dir, tmp_path, **extra) -> Trainer:
    config = load_config(None, tiny_overrides(model_dir, tmp_path / "runs", **extra))
    trainer = Trainer(config, RunLogger(tmp_path, config.train.num_epochs, 1, quiet=True))
    trainer.setup()
    with torch.no_grad():  # off the zero-B init, the same on both trainers (their LoRA init is seeded alike)
        generator = torch.Generator().manual_seed(3)
        for param in trainer.trainable:
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return trainer


def count_calls(modules: list[torch.nn.Module]) -> list[int]:
    """A counter of the `forward` calls of `modules`, recomputations included (torch's checkpoint recomputes without
    firing forward hooks, so `forward` itself is wrapped)."""
    calls = [0]

    def counted(forward):
        def wrapper(*args, **kwargs):
            calls[0] += 1
            return forward(*args, **kwargs)

        return wrapper

    for module in modules:
        module.forward = counted(module.forward)
    return calls


def blocks(trainer: Trainer) -> list[torch.nn.Module]:
    """Blocks that per-block checkpointing wraps and that the gradient crosses: the U-Net's decoder resnets (the
    encoder's come before any cross-attention, so nothing there needs a gradient), FLUX's transformer blocks."""
    denoiser = trainer.policy.denoiser
    if hasattr(denoiser, "transformer_blocks"):
        return [*denoiser.transformer_blocks, *denoiser.single_transformer_blocks]
    return [resnet for block in denoiser.up_blocks for resnet in block.resnets]


def grads(trainer: Trainer) -> list[torch.Tensor]:
    found = [p.grad.clone() for p in trainer.trainable if p.grad is not None]
    assert found and all(g.abs().max() > 0 for g in found)
    return found


@pytest.mark.parametrize("model", ["sd", "flux"])
def test_backprop_gradient_is_the_same_with_per_block_checkpointing(tiny_model_dir, tmp_path, model):
    extra = {**BACKPROP, "backprop__num_grad_steps": 2, **(FLUX if model == "flux" else {})}
    results = {}
    for checkpointing in (False, True):
        trainer = make_trainer(
            tiny_model_dir, tmp_path / str(checkpointing), backprop__gradient_checkpointing=checkpointing, **extra
        )
        calls = count_calls(blocks(trainer))
        vae_calls = count_calls([trainer.policy.vae.decoder.mid_block])
        trainer.algorithm.train_micro_batch(["a cat", "a dog"], torch.Generator().manual_seed(5), 2, 0)
        results[checkpointing] = grads(trainer), calls[0], vae_calls[0]
    (plain, plain_calls, plain_vae), (checked, checked_calls, checked_vae) = results[False], results[True]
    num_steps = 4  # tiny_overrides' sample.num_steps: 2 without a graph, 2 with one (recomputed)
    assert checked_calls == plain_calls * (num_steps + 2) // num_steps and (plain_vae, checked_vae) == (1, 2)
    for a, b in zip(checked, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))


@pytest.mark.parametrize("model", ["sd", "flux"])
def test_ddpo_update_gradient_is_the_same_with_per_block_checkpointing(tiny_model_dir, tmp_path, model):
    extra = FLUX if model == "flux" else {}
    results = {}
    for checkpointing in (False, True):
        trainer = make_trainer(
            tiny_model_dir, tmp_path / str(checkpointing), ddpo__gradient_checkpointing=checkpointing, **extra
        )
        trajectory, advantages, rows, steps = first_batch(trainer)
        calls = count_calls(blocks(trainer))
        stats = trainer.algorithm.train_micro_batch(trajectory, advantages, rows, steps)
        results[checkpointing] = grads(trainer), calls[0], stats["ratio"]
    (plain, plain_calls, ratio), (checked, checked_calls, checked_ratio) = results[False], results[True]
    assert checked_calls == 2 * plain_calls and ratio == pytest.approx(checked_ratio, abs=1e-6)
    for a, b in zip(checked, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(b.abs().max()))
