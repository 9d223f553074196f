"""Faults lose nothing: NaN/inf rewards and gradients, a full disk, and SIGKILL at any phase followed by --resume."""

import json
import multiprocessing
import os
import signal
import socket

import pytest
import torch
from conftest import tiny_overrides
from safetensors.torch import load_file
from test_trainer import first_batch, make_trainer

from texforce.cli.main import main
from texforce.rewards import RewardOutput, build_reward
from texforce.run import trainer as trainer_module
from texforce.run.train import train_run
from texforce.training.checkpoint import complete_checkpoints

TRAIN_BATCH, CHUNK = 8, 4  # samples per epoch and per sampling batch in tiny_overrides; eval batches have 2


def poison_rewards(monkeypatch, bad_per_epoch: dict[int, int]) -> None:
    """Make the reward NaN/inf for the first `bad_per_epoch[epoch]` samples of an epoch (training batches only)."""
    seen = {"training": 0}

    def build(*args, **kwargs):
        reward = build_reward(*args, **kwargs)

        def poisoned(images, prompts):
            output = reward(images, prompts)
            if len(prompts) != CHUNK:  # an evaluation batch
                return output
            epoch, offset = divmod(seen["training"], TRAIN_BATCH)
            seen["training"] += len(prompts)
            bad = torch.arange(offset, offset + len(prompts)) < bad_per_epoch.get(epoch + 1, 0)
            values = torch.tensor([float("nan"), float("inf")]).repeat(len(prompts))[: len(prompts)]
            return RewardOutput(total=torch.where(bad, values, output.total), components=output.components)

        return poisoned

    monkeypatch.setattr(trainer_module, "build_reward", build)


def adapters_of(run_or_checkpoint) -> dict[str, torch.Tensor]:
    return load_file(run_or_checkpoint / "lora" / "text_encoder" / "adapter_model.safetensors")


def test_nonfinite_rewards_are_dropped_with_a_warning_and_counted(monkeypatch, tiny_model_dir, tmp_path, capsys):
    poison_rewards(monkeypatch, {1: 1, 2: 0})
    run = train_run(None, tiny_overrides(tiny_model_dir, tmp_path, train__max_nonfinite_fraction=0.2), quiet=True)
    assert "epoch 1: dropped 1 of 8 samples with a NaN/inf reward" in capsys.readouterr().err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["faults/dropped_samples"] for r in rows] == [1, 0]
    assert all(r["faults/skipped_steps"] == 0 and r["reward_mean"] == r["reward_mean"] for r in rows)
    assert all(torch.isfinite(w).all() for w in adapters_of(run).values())


def test_too_many_nonfinite_rewards_abort_with_the_last_checkpoint_intact(
    monkeypatch, tiny_model_dir, tmp_path, capsys
):
    poison_rewards(monkeypatch, {2: 2})
    assert main(["train", "--quiet", *tiny_overrides(tiny_model_dir, tmp_path)]) == 2
    err = capsys.readouterr().err
    assert (
        "texforce train: error: epoch 2: 2 of 8 rewards are NaN/inf (more than train.max_nonfinite_fraction=0.1)"
        in err
    )
    checkpoints = complete_checkpoints(tmp_path / "run")
    assert [c.name for c in checkpoints] == ["checkpoint_00001"]
    assert all(torch.isfinite(w).all() for w in adapters_of(checkpoints[0]).values())


def test_nonfinite_gradient_never_reaches_the_weights(tiny_model_dir, tmp_path):
    trainer = make_trainer(tiny_model_dir, tmp_path)
    trajectory, advantages, _, _ = first_batch(trainer)
    before = [p.detach().clone() for p in trainer.trainable]
    advantages[:] = float("nan")  # a NaN loss: every gradient is NaN
    shuffles = trainer.algorithm.shuffles(len(advantages), torch.Generator().manual_seed(0))
    update = trainer.algorithm.update(trajectory, advantages, shuffles)
    assert update["skipped_steps"] == trainer.algorithm.steps_per_epoch == 2
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.trainable, strict=True))
    assert not trainer.optimizer.state  # AdamW never stepped: no NaN in its moments either


def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(monkeypatch, tiny_model_dir, tmp_path, capsys):
    from texforce.training import checkpoint

    real_save = torch.save

    def save(state, path, *args, **kwargs):
        if state.get("epoch") == 2:
            raise OSError(28, "No space left on device")
        real_save(state, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    assert main(["train", "--quiet", *tiny_overrides(tiny_model_dir, tmp_path)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("texforce")]
    run = tmp_path / "run"
    assert lines == [
        f"texforce train: error: cannot write checkpoint {run}/checkpoints/checkpoint_00002 (No space left on "
        f"device); the last checkpoint is intact: texforce train --resume {run}"
    ]
    assert [c.name for c in complete_checkpoints(tmp_path / "run")] == ["checkpoint_00001"]
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp"))


def test_disk_full_before_the_first_checkpoint_says_so_and_leaves_no_run_folder(
    monkeypatch, tiny_model_dir, tmp_path, capsys
):
    """Was: "the previous checkpoint is intact" when there was none, and a half-made run folder."""
    from texforce.training import checkpoint

    def save(state, path, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", save)
    assert main(["train", "--quiet", *tiny_overrides(tiny_model_dir, tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.endswith("(No space left on device); no checkpoint was written yet: start the run again\n"), err
    assert not (tmp_path / "run").exists()


def interrupt_at_epoch(monkeypatch, epoch: int, seen: list | None = None) -> None:
    """Ctrl-C as the run logs epoch `epoch`; `seen` collects the run folder's lock file at every epoch."""
    from texforce.observe.runlog import RunLogger

    log_epoch = RunLogger.epoch

    def epoch_then_interrupt(self, number, stats, lrs):
        if seen is not None:
            seen.append((self.run_dir / ".lock").read_text())
        if number == epoch:
            raise KeyboardInterrupt
        log_epoch(self, number, stats, lrs)

    monkeypatch.setattr(RunLogger, "epoch", epoch_then_interrupt)


def test_ctrl_c_says_how_to_resume_and_unlocks_the_run(monkeypatch, tiny_model_dir, tmp_path, capsys):
    seen = []
    interrupt_at_epoch(monkeypatch, 2, seen)
    assert main(["train", "--quiet", *tiny_overrides(tiny_model_dir, tmp_path)]) == 130
    run = tmp_path / "run"
    assert capsys.readouterr().err == (
        f"texforce train: interrupted; the last checkpoint is intact: texforce train --resume {run}\n"
    )
    assert seen == [f"process {os.getpid()} on {socket.gethostname()}\n"] * 2  # locked while training, by us
    assert not (run / ".lock").exists() and [c.name for c in complete_checkpoints(run)] == ["checkpoint_00001"]


def test_ctrl_c_before_the_first_checkpoint_leaves_no_run_folder(monkeypatch, tiny_model_dir, tmp_path, capsys):
    interrupt_at_epoch(monkeypatch, 1)
    assert main(["train", "--quiet", *tiny_overrides(tiny_model_dir, tmp_path)]) == 130
    err = capsys.readouterr().err
    assert err == "texforce train: interrupted; no checkpoint was written yet: start the run again\n"
    assert not (tmp_path / "run").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tiny_model_dir, tmp_path):
    """A lock file left by a killed process (the kernel dropped its flock) does not block --resume."""
    overrides = tiny_overrides(tiny_model_dir, tmp_path, train__num_epochs=1)
    run = train_run(None, overrides, quiet=True)
    (run / ".lock").write_text("process 999999999 on a-dead-host\n")
    assert train_run(resume=str(run), quiet=True) == run
    assert not (run / ".lock").exists()


def test_unwritable_output_folder(tiny_model_dir, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert main(["train", "--quiet", *tiny_overrides(tiny_model_dir, blocker)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("texforce")]
    assert len(lines) == 1 and f"cannot write to the run folder {blocker / 'run'}" in lines[0]


# ------------------------------------------------------------------ SIGKILL, then --resume
# sample:1 dies before any checkpoint; checkpoint:2 after epoch 2's metrics line (which the resume drops)
KILL_POINTS = ["sample:1", "reward:2", "update:2", "checkpoint:2"]


def _train_until_killed(overrides: list[str], kill_at: str) -> None:
    torch.set_num_threads(1)
    os.environ["TEXFORCE_TEST_KILL_AT"] = kill_at
    train_run(None, overrides, quiet=True)


@pytest.fixture(scope="module")
def straight_run(tiny_model_dir, tmp_path_factory):
    """One thread throughout, as in the killed children: bit-equality needs the same float summation order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("kill")
    overrides = tiny_overrides(
        tiny_model_dir,
        root,
        train__num_epochs=2,
        advantage__mode="per_prompt",
        advantage__min_count=2,
        run_name="straight",
    )
    yield root, overrides, train_run(None, overrides, quiet=True)
    torch.set_num_threads(threads)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_sigkill_at_any_point_then_resume_equals_an_uninterrupted_run(straight_run):
    """Each child is a forked process killed by SIGKILL at a deterministic point (TEXFORCE_TEST_KILL_AT)."""
    root, overrides, straight = straight_run
    context = multiprocessing.get_context("fork")
    for kill_at in KILL_POINTS:
        name = kill_at.replace(":", "_")
        child = context.Process(target=_train_until_killed, args=([*overrides, f"run_name={name}"], kill_at))
        child.start()
        child.join(timeout=120)
        assert child.exitcode == -signal.SIGKILL, (kill_at, child.exitcode)
        resumed = train_run(resume=str(root / name), quiet=True)
        a, b = adapters_of(straight), adapters_of(resumed)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), kill_at
        rows = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [1, 2], kill_at
