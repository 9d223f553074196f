"""Measuring memory on the meta device: which tensors a computation keeps alive, and at most how many bytes at once,
without allocating any (`texforce plan`).

`LiveMemory` is a dispatch mode that sees every tensor an operation makes, forward and backward, and follows its
storage until the storage is freed (views share it: each storage counts once). Its `peak` is what a caching
allocator would need without fragmentation: the saved activations autograd keeps, the transient intermediates and
the gradients, as the real kernels' shapes and dtypes make them. Tensors alive before the mode (the weights) are
not counted. A value read back into Python (`.item()`, `bool(t)`) is 1 or True: a meta tensor has none, and the
libraries read only flags such as "is there no padding?".

On the meta device torch's `scaled_dot_product_attention` takes its math path, which keeps the full attention
matrix; a GPU runs flash or memory-efficient attention, which keeps only q, k, v, the output and one fp32
log-sum-exp per query. `gpu_attention` stands that memory model in for it. Attention written out by hand
(`model.attention=math`: diffusers' `AttnProcessor`, transformers' eager attention) keeps its matrices, as on a GPU.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def storage_key(tensor: torch.Tensor) -> int:
    """An id of the tensor's storage, the same for all its views, unique while the storage lives."""
    return tensor.untyped_storage()._cdata


class LiveMemory(TorchDispatchMode):
    """Bytes of the storages made by operations while the mode is on and still alive: `current`, and `peak` since
    the last `reset_peak`."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None) -> Any:
        if func is torch.ops.aten._local_scalar_dense.default:  # `.item()`, `bool(t)`: a meta tensor has no value
            return True if args[0].dtype == torch.bool else 1  # e.g. transformers' "no padding?" check: yes
        out = func(*args, **(kwargs or {}))
        inputs = None
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and storage_key(tensor) not in self.sizes:
                if inputs is None:  # a view of an input made before the mode (`weight.t()`) is no new memory
                    inputs = {storage_key(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
                if storage_key(tensor) not in inputs:
                    self._track(tensor)
        return out

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        self.sizes[key] = storage.nbytes()
        self.current += self.sizes[key]
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._release, key)  # storages keep their Python object while alive anywhere

    def _release(self, key: int) -> None:
        self.current -= self.sizes.pop(key)

    def reset_peak(self) -> None:
        self.peak = self.current


class _GPUAttention(torch.autograd.Function):
    """Attention with a GPU kernel's memory: the output (B, H, Lq, Dv) and an fp32 log-sum-exp (B, H, Lq) made; q,
    k, v, output and log-sum-exp saved; gradients of q, k and v made in the backward pass."""

    @staticmethod
    def forward(ctx, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        output = query.new_empty((*query.shape[:-1], value.shape[-1]))
        logsumexp = query.new_empty(query.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(query, key, value, output, logsumexp)
        return output

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        query, key, value, _, _ = ctx.saved_tensors
        return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)


@contextmanager
def gpu_attention() -> Iterator[None]:
    """Within the block `F.scaled_dot_product_attention` has the memory of a GPU's flash / memory-efficient kernel
    (masks, dropout and scale change no sizes and are ignored); only for sizing on the meta device."""
    original = F.scaled_dot_product_attention

    def attention(query, key, value, *args, **kwargs):
        return _GPUAttention.apply(query, key, value)

    F.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original
