"""Gradients of the forget, retain and mismatch losses, for the candidate parameters only.

One pass over each split's micro-batches (retain and mismatch share theirs); memory is bounded by the micro-batch,
and no other parameter gets a gradient or optimizer state (the model's own parameters are never set to require
grad).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .objective import Objective, Params


@dataclass
class Gradients:
    forget: Params
    retain: Params
    mismatch: Params
    backward_passes: int
    retain_sketch: list[Params] = field(default_factory=list)


def _leaves(params: Params) -> Params:
    """Differentiable aliases of `params`; only inference tensors (ComfyUI loads weights as such) need a copy,
    the others are shared, which keeps a model's worth of copies out of the peak memory."""
    return {k: (v.detach().clone() if v.is_inference() else v.detach()).requires_grad_(True)
            for k, v in params.items()}


def _scaled_grads(losses: Sequence[torch.Tensor], leaves: Params, scale: float) -> list[tuple]:
    """Gradients of each loss × `scale` (one backward each, sharing the forward)."""
    return [torch.autograd.grad(loss * scale, list(leaves.values()), allow_unused=True,
                                retain_graph=k + 1 < len(losses)) for k, loss in enumerate(losses)]


def _mean_gradients(objective: Objective, split: str, params: Params, count: int,
                    losses_of: Callable[[Params, Any], Sequence[torch.Tensor]]) -> tuple[list[Params], int]:
    """Mean gradient of each of the `count` losses that `losses_of` computes from one forward pass per micro-batch of
    `split` (retain and mismatch share theirs), each loss with its own backward. With a loss scale above 1, a
    micro-batch whose scaled gradients overflow is computed again at a 16× smaller scale."""
    leaves = _leaves(params)
    totals = [{k: torch.zeros_like(v) for k, v in params.items()} for _ in range(count)]
    scale = objective.gradient_scale
    n = 0
    with torch.enable_grad():
        for batch in objective.batches(split):
            per_loss = _scaled_grads(losses_of(leaves, batch), leaves, scale)
            while scale > 1.0 and not all(torch.isfinite(g).all() for grads in per_loss for g in grads
                                          if g is not None):
                scale = max(1.0, scale / 16)
                per_loss = _scaled_grads(losses_of(leaves, batch), leaves, scale)
            for grads, total in zip(per_loss, totals, strict=True):
                for acc, g in zip(total.values(), grads):
                    if g is not None:
                        acc += g / scale if scale != 1.0 else g
            n += 1
    if n == 0:
        raise ValueError(f"the {split} set is empty: give at least one {split} prompt or image")
    return [{k: v.div_(n) for k, v in total.items()} for total in totals], n


def retain_sketch(objective: Objective, params: Params, size: int, seed: int = 0) -> tuple[list[Params], int]:
    """Gradients of `size` random projections <outputs, e_k> of the retain outputs: a randomized sketch of the
    directions in which a step would move retain behaviour (first order), so the step can avoid them."""
    gen = torch.Generator().manual_seed(seed)
    leaves = _leaves(params)
    sketch = [{k: torch.zeros_like(v) for k, v in params.items()} for _ in range(size)]
    passes = 0
    with torch.enable_grad():
        for batch in objective.batches("retain"):
            out = objective.retain_outputs(leaves, batch)
            for acc in sketch:
                probe = torch.randn(out.shape, generator=gen).to(out.device)
                grads = torch.autograd.grad((out * probe).sum(), list(leaves.values()), retain_graph=True,
                                            allow_unused=True)
                for (name, a), g in zip(acc.items(), grads):
                    if g is not None:
                        a += g
                passes += 1
    return sketch, passes


def compute_gradients(objective: Objective, params: Params, with_mismatch: bool = True,
                      sketch_size: int = 0) -> Gradients:
    """∇ of each loss at `params` (the mismatch gradient is zero at θ⁰ by construction, so it is skipped there),
    plus an optional sketch of the retain outputs' sensitivity."""
    (forget,), n_f = _mean_gradients(objective, "forget", params, 1, lambda p, b: (objective.forget_loss(p, b),))
    if with_mismatch:
        (retain, mismatch), n_r = _mean_gradients(objective, "retain", params, 2, objective.retain_losses)
        n_m = n_r
    else:
        (retain,), n_r = _mean_gradients(objective, "retain", params, 1, lambda p, b: (objective.retain_loss(p, b),))
        mismatch, n_m = {k: torch.zeros_like(v) for k, v in params.items()}, 0
    sketch, n_s = retain_sketch(objective, params, sketch_size) if sketch_size else ([], 0)
    return Gradients(forget, retain, mismatch, n_f + n_r + n_m + n_s, sketch)
