"""Gradients of the forget, retain and mismatch losses, for the candidate parameters only.

One pass over each split's micro-batches; memory is bounded by the micro-batch, and no other parameter gets a
gradient or optimizer state (the model's own parameters are never set to require grad).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .objective import Objective, Params


@dataclass
class Gradients:
    forget: Params
    retain: Params
    mismatch: Params
    backward_passes: int


def _mean_gradient(objective: Objective, loss_name: str, split: str, params: Params) -> tuple[Params, int]:
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    loss_fn = getattr(objective, loss_name)
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    n = 0
    with torch.enable_grad():
        for batch in objective.batches(split):
            loss = loss_fn(leaves, batch)
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
            for (name, acc), g in zip(total.items(), grads):
                if g is not None:
                    acc += g
            n += 1
    if n == 0:
        raise ValueError(f"the {split} set is empty: give at least one {split} prompt or image")
    return {k: v / n for k, v in total.items()}, n


def compute_gradients(objective: Objective, params: Params, with_mismatch: bool = True) -> Gradients:
    """∇ of each loss at `params`. The mismatch gradient is zero at θ⁰ by construction, so it is skipped there."""
    forget, n_f = _mean_gradient(objective, "forget_loss", "forget", params)
    retain, n_r = _mean_gradient(objective, "retain_loss", "retain", params)
    if with_mismatch:
        mismatch, n_m = _mean_gradient(objective, "mismatch_loss", "retain", params)
    else:
        mismatch, n_m = {k: torch.zeros_like(v) for k, v in params.items()}, 0
    return Gradients(forget, retain, mismatch, n_f + n_r + n_m)
