"""How many bytes autograd keeps for the backward pass while some code runs (tests and benchmarks of activation
memory, device-independent: the same count on a CPU as on a GPU running the same operations)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch


@contextmanager
def saved_tensor_bytes(weights: Iterable[torch.Tensor]) -> Iterator[list[int]]:
    """Yields a one-element list that holds, once the block ends, the bytes of the distinct storages autograd saved
    inside it, the storages of `weights` (parameters, their aliases) not counted."""
    excluded = {w.untyped_storage().data_ptr() for w in weights}
    kept: dict[int, int] = {}
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in excluded:
            kept[storage.data_ptr()] = storage.nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total
    total[0] = sum(kept.values())
