"""Several processes (GPUs) with accelerate, torch.distributed underneath: `accelerate launch -m texforce train …`.

The split is chosen so that N processes with `sample.num_batches_per_epoch = B / N` and
`train.gradient_accumulation_steps = A / N` make the same update as one process with B and A:
- sampling is sharded by global batch index: process r samples batches r·b … r·b + b − 1, and batch i
  draws its noise from its own stream, keyed by (seed, epoch, i), whichever process samples it;
- rewards, prompts and the chains (ids, latents, log-probs; not the images) are gathered, so the
  advantages and per-prompt statistics are global and identical on every process;
- the update walks one global shuffle: each optimizer step's samples are split between the processes,
  whose gradients are then averaged (all-reduce) before clipping — the gradient of the same mean loss;
- only the main process writes (metrics, grids, TensorBoard, checkpoints, adapters); the others wait.
With one process every function here is the identity.
"""

from __future__ import annotations

import torch
from accelerate import PartialState
from accelerate.utils import gather, gather_object, reduce

from texforce.rewards import RewardOutput
from texforce.sampling import Trajectory


def process_state(device: str = "auto") -> PartialState:
    """accelerate's (shared) process state. Without a GPU, or with `model.device=cpu`, launched processes
    talk through gloo on the CPU (accelerate would otherwise not form a group when no GPU is present)."""
    return PartialState(cpu=device == "cpu" or not torch.cuda.is_available())


def batch_generator(seed: int, epoch: int, batch: int) -> torch.Generator:
    """The random stream of global sample batch `batch` of `epoch`: the same on any process."""
    return torch.Generator().manual_seed((seed * 1_000_003 + epoch) * 100_003 + batch + 1)


def gather_tensor(state: PartialState, tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's `tensor` along dim 0, in process order, on the CPU."""
    if state.num_processes == 1:
        return tensor
    return gather(tensor.to(state.device).contiguous()).cpu()


def gather_reward(state: PartialState, reward: RewardOutput) -> RewardOutput:
    """Every process's scores (total and components), in global sample order."""
    if state.num_processes == 1:
        return reward
    components = {name: gather_tensor(state, values) for name, values in reward.components.items()}
    return RewardOutput(total=gather_tensor(state, reward.total), components=components)


def gather_trajectory(state: PartialState, trajectory: Trajectory) -> Trajectory:
    """Every process's chains, in global sample order. Images stay local (they were only needed for rewards)."""
    if state.num_processes == 1:
        return trajectory
    return Trajectory(
        prompts=gather_object(list(trajectory.prompts)),
        prompt_ids=gather_tensor(state, trajectory.prompt_ids),
        latents=gather_tensor(state, trajectory.latents),
        log_probs=gather_tensor(state, trajectory.log_probs),
        timesteps=trajectory.timesteps,
        images=trajectory.images,
    )


def mean_over_processes(state: PartialState, values: dict[str, float]) -> dict[str, float]:
    """Average per-process means (equal sample counts) into the global mean, for logging."""
    if state.num_processes == 1 or not values:
        return values
    means = reduce(torch.tensor(list(values.values()), dtype=torch.float64, device=state.device), "mean")
    return dict(zip(values, means.tolist(), strict=True))


def average_gradients(state: PartialState, params: list[torch.nn.Parameter]) -> None:
    """All-reduce the mean of the gradients of `params` (one flat buffer, one collective)."""
    if state.num_processes == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = reduce(torch.cat([g.reshape(-1) for g in grads]).to(state.device), "mean").to(params[0].device)
    offset = 0
    for param, grad in zip(params, grads, strict=True):
        param.grad = flat[offset : offset + grad.numel()].view_as(grad).clone()
        offset += grad.numel()
