"""Direct reward backprop: its gradient through the last K steps equals a plain autograd reference on diffusers'
own DDIM step, the truncation truncates, one step climbs the reward, resume is bit-exact, and the config refuses
rewards without a gradient."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_overrides
from safetensors.torch import load_file

from texforce.errors import TexforceError
from texforce.observe.runlog import RunLogger
from texforce.run.run_config import load_config
from texforce.run.train import train_run
from texforce.run.trainer import Trainer
from texforce.sampling import guided_noise_fn

BACKPROP = {"train__algorithm": "backprop", "reward": "world_clipscore", "sample__eta": 0.0}


def make_trainer(model_dir, tmp_path, **extra) -> Trainer:
    config = load_config(None, tiny_overrides(model_dir, tmp_path / "runs", **{**BACKPROP, **extra}))
    trainer = Trainer(config, RunLogger(tmp_path, config.train.num_epochs, 1, quiet=True))
    trainer.setup()
    with torch.no_grad():  # move off the zero-B init so that every gradient is generic
        generator = torch.Generator().manual_seed(3)
        for module in (*trainer.policy.text_encoders.values(), trainer.policy.denoiser):
            for name, param in module.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.05, generator=generator)
    return trainer


PROMPTS = ["A photo of a cat", "A photo of a dog"]


def reference_gradients(trainer: Trainer, num_grad_steps: int, seed: int) -> list[torch.Tensor]:
    """Plain autograd: the chain with diffusers' `DDIMScheduler.step` (eta 0), graph kept on the last K steps only,
    no checkpointing; −reward back-propagated into the LoRA weights."""
    c, policy = trainer.config, trainer.policy
    ids = policy.tokenize(PROMPTS)
    predict = guided_noise_fn(
        policy.denoiser, policy.encode(ids), policy.negative_embeds(len(PROMPTS)), c.sample.guidance_scale
    )
    latents = policy.initial_noise(len(PROMPTS), torch.Generator().manual_seed(seed))
    scheduler = policy.scheduler
    scheduler.set_timesteps(c.sample.num_steps)
    for index, t in enumerate(scheduler.timesteps):
        with torch.set_grad_enabled(index >= c.sample.num_steps - num_grad_steps):
            output = predict(latents, t.expand(len(PROMPTS)))
            latents = scheduler.step(output, t, latents, eta=0.0).prev_sample
    images = (policy.vae.decode(latents / policy.vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    reward = trainer.reward_fn.differentiable(images, PROMPTS).total
    (-reward.sum() / (len(PROMPTS) * c.train.gradient_accumulation_steps)).backward()
    return take_gradients(trainer)


def take_gradients(trainer: Trainer) -> list[torch.Tensor | None]:
    """The trainable tensors' gradients, then zeroed; None where nothing reads the weights (SDXL's first text
    encoder's last layer: the U-Net gets its penultimate hidden states)."""
    gradients = [None if p.grad is None else p.grad.clone() for p in trainer.trainable]
    trainer.optimizer.zero_grad(set_to_none=True)
    return gradients


def ours(trainer: Trainer, num_grad_steps: int, seed: int) -> list[torch.Tensor]:
    trainer.algorithm.train_micro_batch(PROMPTS, torch.Generator().manual_seed(seed), num_grad_steps, 0)
    return take_gradients(trainer)


@pytest.mark.parametrize("num_grad_steps", [1, 2, 4])
@pytest.mark.parametrize("checkpointing", [True, False])
def test_gradient_equals_plain_autograd_reference(tiny_model_dir, tmp_path, num_grad_steps, checkpointing):
    trainer = make_trainer(
        tiny_model_dir, tmp_path, unet_lora__use=True, backprop__gradient_checkpointing=checkpointing
    )
    reference = reference_gradients(trainer, num_grad_steps, seed=5)
    for a, b in zip(ours(trainer, num_grad_steps, seed=5), reference, strict=True):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, atol=1e-5 * float(b.abs().max()), rtol=1e-4)


def test_sdxl_gradient_equals_plain_autograd_reference(tiny_sdxl_dir, tmp_path):
    """Through both text encoders' LoRAs, the pooled embedding and the time ids, with CFG on an encoded negative."""
    trainer = make_trainer(tiny_sdxl_dir, tmp_path, unet_lora__use=True)
    reference = reference_gradients(trainer, 2, seed=5)
    assert sum(b is None for b in reference) == 8  # the first encoder's last layer: 4 projections × (A, B)
    for a, b in zip(ours(trainer, 2, seed=5), reference, strict=True):
        assert (a is None) == (b is None)
        if b is not None:
            assert b.abs().max() > 0
            torch.testing.assert_close(a, b, atol=1e-5 * float(b.abs().max()), rtol=1e-4)


def test_truncation_changes_the_gradient(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path)
    one, full = ours(trainer, 1, seed=5), ours(trainer, 4, seed=5)
    assert any(not torch.allclose(a, b, rtol=1e-2) for a, b in zip(one, full, strict=True))


def test_random_truncation_draws_k_per_micro_batch(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path, backprop__num_grad_steps=4, backprop__random_truncation=True)
    draws = trainer.algorithm.truncations(400, torch.Generator().manual_seed(0))
    assert set(draws) == {1, 2, 3, 4}
    fixed = make_trainer(tiny_model_dir, tmp_path / "fixed", backprop__num_grad_steps=3)
    assert fixed.algorithm.truncations(5, torch.Generator().manual_seed(0)) == [3] * 5


def test_one_step_climbs_the_reward(tiny_model_dir, tmp_path):
    """The sign of the whole update: after one small step the same noise and prompts score higher."""
    trainer = make_trainer(
        tiny_model_dir, tmp_path, text_lora__learning_rate=1e-4, backprop__num_grad_steps=4, train__max_grad_norm=1e9
    )
    before, _ = trainer.algorithm.train_micro_batch(PROMPTS, torch.Generator().manual_seed(5), 4, 0)
    trainer.optimizer_step()
    trainer.optimizer.zero_grad(set_to_none=True)
    after, _ = trainer.algorithm.train_micro_batch(PROMPTS, torch.Generator().manual_seed(5), 4, 0)
    assert after.total.mean() > before.total.mean()


def test_resume_equals_uninterrupted_run(tiny_model_dir, tmp_path, monkeypatch):
    overrides = tiny_overrides(tiny_model_dir, tmp_path, train__num_epochs=3, unet_lora__use=True, **BACKPROP)
    straight = train_run(None, [*overrides, "run_name=straight"], quiet=True)
    original = RunLogger.checkpoint

    def crash_after_first(self, epoch, state, write_adapters):
        original(self, epoch, state, write_adapters)
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunLogger, "checkpoint", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        train_run(None, [*overrides, "run_name=resumed"], quiet=True)
    monkeypatch.setattr(RunLogger, "checkpoint", original)
    resumed = train_run(resume=str(tmp_path / "resumed"), quiet=True)
    for part in ("text_encoder", "unet"):
        a = load_file(straight / "lora" / part / "adapter_model.safetensors")
        b = load_file(resumed / "lora" / part / "adapter_model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert any(v.abs().max() > 0 for k, v in a.items() if "lora_B" in k)  # it trained

    def metrics(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]

    assert metrics(straight) == metrics(resumed) and len(metrics(resumed)) == 3
    assert {"reward_mean", "reward/world_clipscore_mean", "ppo/grad_norm", "ppo/loss"} <= metrics(straight)[0].keys()


def test_config_refuses_a_reward_without_gradient_naming_those_with_one():
    with pytest.raises(TexforceError) as error:
        load_config(None, ["train.algorithm=backprop", "reward=jpeg_compressibility", "sample.eta=0"])
    message = str(error.value)
    assert "jpeg_compressibility is not differentiable" in message and "world_preference" in message
    assert "imagereward" in message and "\n" not in message
    # a zero-weight rider is only logged, so it may be anything (that can read the prompts)
    rider = ["reward=world_clipscore:1+world_alignment:0", "prompts.train=world"]
    load_config(None, ["train.algorithm=backprop", *rider, "sample.eta=0"])
    with pytest.raises(TexforceError, match=r"train\.algorithm must be ddpo or backprop, got .grpo."):
        load_config(None, ["train.algorithm=grpo"])
    with pytest.raises(TexforceError, match=r"backprop.num_grad_steps must be in \[1, sample.num_steps=50\]"):
        load_config(None, ["train.algorithm=backprop", "reward=clipscore", "backprop.num_grad_steps=51"])


def test_anchor_gradient_is_the_distance_of_styled_and_negative_prompts_to_the_frozen_one(tiny_model_dir, tmp_path):
    """The anchor's gradient equals plain autograd of λ · Σ ‖E(p) − E₀(p)‖² / ‖E₀(p)‖² over the prompts in the
    anchor's style and the negative prompt (it goes through the LoRA, and through guidance it moves every image)."""
    style = "'{prompt}, highly detailed'"  # quoted: an override's value is YAML
    trainer = make_trainer(
        tiny_model_dir, tmp_path, backprop__anchor_coef=3.0, backprop__anchor_style=style, sample__guidance_scale=5.0
    )
    policy, encoder = trainer.policy, trainer.policy.text_encoders["text_encoder"]
    distance = 0.0
    for ids in (policy.tokenize([p + ", highly detailed" for p in PROMPTS]), policy.negative_ids):
        with torch.no_grad(), policy.frozen():
            frozen = encoder(ids)[0]
        distance = distance + (encoder(ids)[0] - frozen).pow(2).mean() / frozen.pow(2).mean()
    (3.0 * distance / trainer.config.train.gradient_accumulation_steps).backward()
    reference = take_gradients(trainer)
    assert trainer.algorithm.anchor(PROMPTS) == pytest.approx(float(distance), rel=1e-5) and float(distance) > 0
    for a, b in zip(take_gradients(trainer), reference, strict=True):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b, atol=1e-6 * float(b.abs().max()), rtol=1e-4)


def test_training_styles_show_the_model_the_styled_text_and_the_reward_the_plain_prompt(
    tiny_model_dir, tmp_path, monkeypatch
):
    """`prompts.train_styles`: every training prompt is drawn in each style; the text encoder reads the styled text,
    the reward (backprop's differentiable one and the scoring DDPO uses) and the anchor read the plain prompt."""
    style = "'{prompt}, highly detailed'"
    trainer = make_trainer(
        tiny_model_dir,
        tmp_path,
        prompts__train_styles=f"[plain, {style}]",
        backprop__anchor_coef=1.0,
        backprop__anchor_style="'tagged {prompt}'",
    )
    plain = list(trainer.prompts.train)
    assert trainer.train_texts == plain + [p + ", highly detailed" for p in plain]
    drawn = [p for e in range(4) for p in trainer.draw_prompts(torch.Generator().manual_seed(e))]
    assert {p.endswith(", highly detailed") for p in drawn} == {True, False}
    assert trainer.judged(drawn) == [p.removesuffix(", highly detailed") for p in drawn]

    seen, judged = [], []
    tokenize, reward = trainer.policy.tokenize, trainer.reward_fn.differentiable
    monkeypatch.setattr(trainer.policy, "tokenize", lambda texts: seen.append(list(texts)) or tokenize(texts))
    monkeypatch.setattr(
        trainer.reward_fn, "differentiable", lambda images, texts: judged.append(list(texts)) or reward(images, texts)
    )
    styled = [p + ", highly detailed" for p in PROMPTS]
    trainer.plain_of.update(zip(styled, PROMPTS, strict=True))  # PROMPTS stand in for training prompts
    _, images = trainer.algorithm.train_micro_batch(styled, torch.Generator().manual_seed(5), 2, 0)
    assert seen == [styled] and judged == [PROMPTS]
    seen.clear()
    trainer.algorithm.anchor(trainer.judged(styled))  # as run_epoch anchors: the plain prompt in anchor_style
    assert seen == [[f"tagged {p}" for p in PROMPTS]]
    call = type(trainer.reward_fn).__call__
    monkeypatch.setattr(
        type(trainer.reward_fn), "__call__", lambda self, i, texts: judged.append(list(texts)) or call(self, i, texts)
    )
    trainer.score(images, styled)  # DDPO's scoring of its drawn texts
    assert judged[-1] == PROMPTS


def test_config_refuses_an_unknown_training_style():
    with pytest.raises(TexforceError, match=r"prompts\.train_styles: unknown prompt style 'fancy'"):
        load_config(None, ["prompts.train_styles=[plain, fancy]"])
