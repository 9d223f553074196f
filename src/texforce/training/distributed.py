"""Several processes (GPUs) with accelerate, torch.distributed underneath: `accelerate launch -m texforce train …`.

The split is chosen so that N processes with `sample.num_batches_per_epoch = B / N` and
`train.gradient_accumulation_steps = A / N` make the same update as one process with B and A:
- sampling is sharded by global batch index: process r samples batches r·b … r·b + b − 1, and batch i
  draws its noise from its own stream, keyed by (seed, epoch, i), whichever process samples it;
- rewards, prompts, token ids and log-probs are gathered, so the advantages and per-prompt statistics are
  global and identical on every process; of the latents, each process gets only the (sample, step) pairs it
  trains on (one all-to-all), not every process's full chains; the images stay where they were rendered;
- the update walks one global shuffle: each optimizer step's samples are split between the processes,
  whose gradients are then averaged (all-reduce) before clipping — the gradient of the same mean loss;
- the before/after evaluation is sharded too: each process renders and judges its slice of the prompt × seed
  images, and the main process gathers the scores, so no process idles in a barrier while another renders;
- only the main process writes (metrics, grids, TensorBoard, checkpoints, adapters); the others wait.
With one process every function here is the identity.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import gather, gather_object, reduce

from texforce.rewards import RewardOutput
from texforce.sampling import LatentRows, Trajectory


def process_state(device: str = "auto", timeout_minutes: float | None = None) -> PartialState:
    """accelerate's (shared) process state; the first call forms the process group. Without a GPU, or with
    `model.device=cpu`, launched processes talk through gloo on the CPU (accelerate would otherwise not form a
    group when no GPU is present). `timeout_minutes` (`distributed.timeout_minutes`) is how long a collective may
    wait for the other processes before the run is stopped: torch's default for NCCL is 10 minutes."""
    options = {} if timeout_minutes is None else {"timeout": timedelta(minutes=timeout_minutes)}
    return PartialState(cpu=device == "cpu" or not torch.cuda.is_available(), **options)


def end_processes(state: PartialState) -> None:
    """Destroy the process group at the end of a run (torch warns at exit about one left behind)."""
    if state.num_processes > 1:
        state.destroy_process_group()


def process_slice(state: PartialState, count: int) -> slice:
    """This process's contiguous share of `count` items, as even as it gets (the first processes get the
    smaller shares)."""
    index, world = state.process_index, state.num_processes
    return slice(count * index // world, count * (index + 1) // world)


def gather_to_main(state: PartialState, value: Any) -> list[Any] | None:
    """Every process's `value` (pickled), in process order, on the main process; None on the others."""
    if state.num_processes == 1:
        return [value]
    values = [None] * state.num_processes if state.is_main_process else None
    torch.distributed.gather_object(value, values, dst=0)
    return values


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


def gather_trajectory(state: PartialState, trajectory: Trajectory, wanted: torch.Tensor) -> Trajectory:
    """Every process's chains, in global sample order, with the latents only of the (sample, step) pairs this
    process trains on: `wanted` (processes, N, T+1) says which pairs each process needs. Images stay local (they
    were only needed for rewards)."""
    if state.num_processes == 1:
        return trajectory
    return Trajectory(
        prompts=gather_object(list(trajectory.prompts)),
        prompt_ids=gather_tensor(state, trajectory.prompt_ids),
        latents=exchange_latents(state, trajectory.latents, wanted),
        log_probs=gather_tensor(state, trajectory.log_probs),
        timesteps=trajectory.timesteps,
        images=trajectory.images,
    )


def exchange_latents(state: PartialState, latents: torch.Tensor, wanted: torch.Tensor) -> LatentRows:
    """The latents of the pairs `wanted[rank]` of the epoch-wide (N, T+1, C, h, w) latents, where each process
    holds its own contiguous n = N / processes samples (`latents`, (n, T+1, C, h, w)).

    Every process knows every process's `wanted` (it follows from the shared shuffle), so each sends each other
    process exactly the pairs it wants, in global (sample, step) order: one all-to-all of raw bytes (any dtype,
    gloo or NCCL). A process holds the pairs it trains on, not world × n full chains.
    """
    rank, world, (n, steps) = state.process_index, state.num_processes, latents.shape[:2]
    size = latents[0, 0].numel()  # elements per latent
    local = slice(rank * n, (rank + 1) * n)
    sends = [latents[wanted[other, local]].reshape(-1, size) for other in range(world)]  # (m, C·h·w) each
    receive_counts = [int(wanted[rank, source * n : (source + 1) * n].sum()) for source in range(world)]
    outgoing = torch.cat(sends).contiguous().view(torch.uint8).to(state.device)
    entry = size * latents.element_size()  # bytes per latent
    incoming = torch.empty((sum(receive_counts), entry), dtype=torch.uint8, device=state.device)
    torch.distributed.all_to_all_single(incoming, outgoing, receive_counts, [len(s) for s in sends])
    values = incoming.cpu().view(latents.dtype).view(-1, *latents.shape[2:])
    index = torch.full((len(wanted[rank]), steps), -1, dtype=torch.long)
    index[wanted[rank]] = torch.arange(len(values))
    return LatentRows(values, index)


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
