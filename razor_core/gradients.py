"""Gradients of the forget, retain and mismatch losses, for the candidate parameters only.

One pass over a split's micro-batches per loss; memory is bounded by the micro-batch, each parameter's gradient is
added to its float32 total as soon as autograd has it, and no other parameter gets a gradient or optimizer state (the
model's own parameters are never set to require grad). The forget and retain gradients cover every candidate
(scores need them); the mismatch gradient only the units a step moves.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .batching import retry_smaller
from .objective import Objective, Params, computable
from .units import EditUnit


@dataclass
class Gradients:
    forget: Params
    retain: Params
    backward_passes: int
    # Only for the parameters of the units the next step moves (`mismatch_gradients`); empty at θ⁰, where the
    # mismatch loss and its gradient are zero by construction.
    mismatch: Params = field(default_factory=dict)
    retain_sketch: list[Params] = field(default_factory=list)


def ordinary_alias(t: torch.Tensor) -> torch.Tensor:
    """`t` detached, as an ordinary tensor over the same memory. Autograd refuses to save inference tensors (ComfyUI
    loads every weight as one) for backward, because they carry no version counter to detect in-place writes; the
    alias has its own, and nothing in razor_core writes to weights in place, so sharing their memory is safe where a
    copy would cost a second model's worth of memory. A tensor subclass (e.g. quantised weights that decode
    themselves) is copied instead, so that it keeps its type."""
    if not t.is_inference():
        return t.detach()
    with torch.inference_mode(False):
        if type(t) not in (torch.Tensor, torch.nn.Parameter):
            return t.detach().clone()
        alias = torch.empty(0, dtype=t.dtype, device=t.device)
        return alias.set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())


def _leaves(params: Params, keys: Sequence[str]) -> Params:
    """Ordinary aliases of `params`, differentiable for `keys` only; none of them copies a weight except the
    differentiable ones stored in float8, whose gradients are float32."""
    wanted = set(keys)
    return {k: computable(ordinary_alias(v)).requires_grad_(True) if k in wanted else ordinary_alias(v)
            for k, v in params.items()}


def _zeros_float32(t: torch.Tensor) -> torch.Tensor:
    """A gradient accumulator: float32 at least, whatever the weights' dtype (sums of many half-precision gradients
    would lose their precision)."""
    return torch.zeros_like(t, dtype=torch.promote_types(t.dtype, torch.float32))


def _mean_gradient(objective: Objective, split: str, params: Params, keys: Sequence[str],
                   loss_of: Callable[[Params, Any], torch.Tensor],
                   restart: Callable[[], None] = lambda: None) -> tuple[Params, int]:
    """Mean gradient of `loss_of` over the micro-batches of `split`, for the parameters `keys` only, again with
    smaller micro-batches if they run out of memory. `restart` is called as every attempt starts over."""
    return retry_smaller(lambda: _mean_gradient_pass(objective, split, params, keys, loss_of, restart),
                         objective.smaller_batches, f"the {split} gradients")


def _mean_gradient_pass(objective: Objective, split: str, params: Params, keys: Sequence[str],
                        loss_of: Callable[[Params, Any], torch.Tensor],
                        restart: Callable[[], None]) -> tuple[Params, int]:
    """One pass of `_mean_gradient`. With a loss scale above 1, a pass in which a scaled gradient overflows starts
    over at a 16× smaller scale."""
    leaves = _leaves(params, keys)
    differentiable = {k: leaves[k] for k in keys}
    scale = objective.gradient_scale
    with torch.enable_grad():
        while True:
            restart()
            total = {k: _zeros_float32(leaves[k]) for k in keys}
            n = 0
            for batch in objective.batches(split):
                if not _backward_into(total, loss_of(leaves, batch), differentiable, scale):
                    break
                n += 1
            else:
                break
            scale = max(1.0, scale / 16)
    if n == 0:
        raise ValueError(f"the {split} set is empty: give at least one {split} prompt or image")
    return {k: v.div_(n) for k, v in total.items()}, n


def _backward_into(total: Params, loss: torch.Tensor, leaves: Params, scale: float) -> bool:
    """Backward of `loss`·`scale` with each leaf's gradient added to `total` (÷ `scale`) as autograd accumulates it,
    so no whole set of gradients is ever in flight (SD1.5: 1.3 GB in float32, 0.65 in fp16). False when a scaled
    gradient is not finite (then `total` is incomplete)."""
    inputs = list(leaves.values())
    if not loss.requires_grad:  # no leaf reaches this loss (a group of units it never reads): zero gradients
        return True
    if scale == 1.0 and all(total[k].dtype == leaf.dtype for k, leaf in leaves.items()):
        # autograd adds each gradient into `.grad` in place: make the totals the `.grad`s
        for k, leaf in leaves.items():
            leaf.grad = total[k]
        try:
            loss.backward(inputs=inputs)
        finally:
            for leaf in inputs:
                leaf.grad = None
        return True
    finite = True  # half-precision leaves or loss scaling: a hook adds each gradient in float32 (an fp16 g / scale
                   # could underflow) and checks it

    def add_into(name: str) -> Callable[[torch.Tensor], None]:
        def hook(leaf: torch.Tensor) -> None:
            nonlocal finite
            g, leaf.grad = leaf.grad, None
            if scale > 1.0 and not torch.isfinite(g).all():
                finite = False
            if finite:
                total[name].add_(g, alpha=1.0 / scale)
        return hook

    handles = [leaf.register_post_accumulate_grad_hook(add_into(name)) for name, leaf in leaves.items()]
    try:
        (loss * scale).backward(inputs=inputs)
    finally:
        for handle in handles:
            handle.remove()
    return finite


def retain_sketch(objective: Objective, params: Params, size: int, seed: int = 0,
                  keys: Sequence[str] | None = None) -> tuple[list[Params], int]:
    """Gradients, for the parameters `keys` (default: all), of `size` random projections <outputs, e_k> of the retain
    outputs: a randomized sketch of the directions in which a step would move retain behaviour (first order), so
    the step can avoid them."""
    gen = torch.Generator().manual_seed(seed)
    keys = list(params) if keys is None else list(keys)
    leaves = _leaves(params, keys)
    sketch = [{k: _zeros_float32(params[k]) for k in keys} for _ in range(size)]
    passes = 0
    with torch.enable_grad():
        for batch in objective.batches("retain"):
            out = objective.retain_outputs(leaves, batch)
            for acc in sketch:
                probe = torch.randn(out.shape, generator=gen).to(out.device)
                grads = torch.autograd.grad((out * probe).sum(), [leaves[k] for k in keys], retain_graph=True,
                                            allow_unused=True)
                for (name, a), g in zip(acc.items(), grads):
                    if g is not None:
                        a += g
                passes += 1
    return sketch, passes


def compute_gradients(objective: Objective, params: Params, sketch_size: int = 0,
                      keys: Sequence[str] | None = None) -> Gradients:
    """∇ of the forget and retain losses at `params` for the parameters `keys` (default: every candidate, what
    scoring needs), plus an optional sketch of the retain outputs' sensitivity. The mismatch gradient is left to
    `mismatch_gradients`."""
    keys = list(params) if keys is None else list(keys)
    forget, n_f = _mean_gradient(objective, "forget", params, keys, objective.forget_loss)
    retain, n_r = _mean_gradient(objective, "retain", params, keys, objective.retain_loss)
    sketch, n_s = retain_sketch(objective, params, sketch_size, keys=keys) if sketch_size else ([], 0)
    return Gradients(forget, retain, n_f + n_r + n_s, retain_sketch=sketch)


def mismatch_gradients(objective: Objective, params: Params, units: list[EditUnit],
                       restart: Callable[[], None] = lambda: None) -> tuple[Params, int]:
    """∇ of the mismatch loss at `params` for `units`' parameters only: a step moves just its edit set, so on a
    large model this saves a float32 gradient of every other candidate (SD1.5: 1.3 GB) at the cost of one more
    forward pass over the retain data (which growth also uses to record the preconditioner's input moments; a pass
    that starts over calls `restart`). Returns the gradients and the number of backward passes."""
    keys = list(dict.fromkeys(p for u in units for p in u.params))
    return _mean_gradient(objective, "retain", params, keys, objective.mismatch_loss, restart)
