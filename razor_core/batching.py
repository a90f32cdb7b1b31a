"""Running out of accelerator memory: retry with smaller batches instead of failing.

How much a batch needs depends on the model, the image size and the card, none of which the defaults can know
(ComfyUI's nodes use 64-sample micro-batches, right for MiniCanvas on a CPU, far too many for SD1.5 at 512² on a
consumer GPU). So every batched loop halves its batch when it runs out of memory and starts over, down to one sample.
"""
from __future__ import annotations

from typing import Callable, TypeVar

import torch

T = TypeVar("T")

OUT_OF_MEMORY_FIX = ("score fewer blocks (blocks: denoiser or text_encoder), use a smaller latent, or free memory "
                     "(unload other models)")


def halve(owner: object, attribute: str) -> bool:
    """Halve the batch size `owner.attribute`; False when it is already 1."""
    size = getattr(owner, attribute)
    if size <= 1:
        return False
    setattr(owner, attribute, size // 2)
    return True


def retry_smaller(run: Callable[[], T], shrink: Callable[[], bool], what: str) -> T:
    """`run()`, run again after `shrink()` each time it runs out of memory; when `shrink` cannot (batches of one
    sample already), an out-of-memory error that names `what` and the ways out."""
    while True:
        try:
            return run()
        except torch.OutOfMemoryError:
            pass  # retried outside the handler: its traceback still holds the failed attempt's tensors
        if not shrink():
            raise torch.OutOfMemoryError(f"{what} ran out of memory even one sample at a time: {OUT_OF_MEMORY_FIX}")
