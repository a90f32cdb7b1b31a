"""The interface between the RAZOR algorithm and a model family's losses.

An objective owns the model, the forget/retain data and the losses; the algorithm only sees parameter dicts. Every
loss is evaluated at `params`, a dict {name: tensor} of the *candidate* parameters' current values (θ⁰ + Δ); all
other parameters stay at θ⁰ and never get gradients.

Sign convention (SPEC §3): `forget_loss` is the quantity the edit *increases*; `retain_loss` and `mismatch_loss` are
decreased. A test proves on MiniCanvas that one step in the computed direction raises the forget loss.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from .units import EditUnit

Params = dict[str, torch.Tensor]


def is_float8(t: torch.Tensor) -> bool:
    """Whether `t`'s dtype supports no arithmetic (no addition, norm or isfinite): float8, as fp8 checkpoints store."""
    return t.is_floating_point() and t.element_size() == 1


def computable(t: torch.Tensor) -> torch.Tensor:
    """`t`, or a float32 copy where it is float8: float8 weights are stored and computed with as they are (their
    layers cast them), and widened only where razor_core computes with them: a gradient leaf, θ + Δ, a check. A
    float32 θ⁰ of every candidate would be 4x an fp8 model's weights."""
    return t.float() if is_float8(t) else t


class NonFiniteError(ValueError):
    """NaN or inf where unlearning needs numbers: in the weights, the data, or what the model computes from them."""


def require_finite(tensors: dict[str, torch.Tensor], what: str, fix: str) -> None:
    """Raise NonFiniteError naming the first of `tensors` that holds NaN or inf (a NaN would silently turn every
    score, step and file into NaN)."""
    for name, t in tensors.items():
        if t.is_floating_point() and not torch.isfinite(computable(t)).all():
            raise NonFiniteError(f"{what} contain NaN or inf ({name}): {fix}")


@dataclass(frozen=True)
class Validation:
    """Classifier-free progress measured on the validation split.

    forget_progress: 0 at the original weights, 1 when the concept's behaviour has fully moved to its target.
    retain_drift: how far the retain behaviour moved, relative to the size of the forget change (0 = untouched).
    """
    forget_progress: float
    retain_drift: float


class Objective(ABC):
    """A model family's unlearning problem: candidate units, θ⁰, micro-batched losses and a validation probe."""

    # Losses are multiplied by this before each backward pass and the gradients divided by it after (AMP's loss
    # scaling): a model that computes in float16 would otherwise carry its backward in fp16's subnormal range, where
    # gradients lose their precision or flush to zero. 1 for float32/bfloat16 models (then nothing changes).
    gradient_scale: float = 1.0

    @abstractmethod
    def units(self) -> list[EditUnit]:
        """Candidate edit units (already restricted to the requested granularity and blocks)."""

    @abstractmethod
    def base_params(self) -> Params:
        """θ⁰ of every parameter any candidate unit touches (detached, never modified)."""

    @abstractmethod
    def batches(self, split: str) -> Iterable[Any]:
        """Micro-batches of 'forget' or 'retain' data; gradients are averaged over them."""

    @abstractmethod
    def forget_loss(self, params: Params, batch: Any) -> torch.Tensor:
        """Increased by unlearning."""

    @abstractmethod
    def retain_loss(self, params: Params, batch: Any) -> torch.Tensor:
        """Decreased: the task loss on retain data."""

    @abstractmethod
    def mismatch_loss(self, params: Params, batch: Any) -> torch.Tensor:
        """Decreased: drift from the frozen model's outputs on retain data (zero at θ⁰)."""

    @abstractmethod
    def retain_outputs(self, params: Params, batch: Any) -> torch.Tensor:
        """The model's outputs on retain data that must not move (their sensitivity protects retention)."""

    @abstractmethod
    def validate(self, params: Params) -> Validation:
        """Progress and drift on the validation split (no gradients)."""

    def validate_forget_first(self, params: Params) -> tuple[float, Callable[[], float]]:
        """Forget progress, and the retain drift as a function to call if it is needed: the step-size search rules
        many steps out on forget progress alone. Objectives whose two halves are separate passes override this to
        compute the drift only when called; this default computes both at once."""
        v = self.validate(params)
        return v.forget_progress, lambda: v.retain_drift

    def smaller_batches(self) -> bool:
        """Halve the gradient micro-batches after running out of memory (`batching.retry_smaller`); False when they
        cannot shrink any further."""
        return False

    def module_root(self) -> nn.Module | None:
        """The module whose submodule names the units' parameter names use, so the retain-aware preconditioner can
        record the inputs of the edited layers; None leaves steps unpreconditioned."""
        return None

    def key_value_map(self, attacked: Sequence[Any] = ()) -> Any:
        """The closed-form key/value map (`kv_map.KeyValueMap`) for the objective's key/value units, solved on the
        contexts of `attacked` (from `attack_contexts`) too; objectives without cross-attention keys/values have
        none."""
        raise NotImplementedError(f"{type(self).__name__} has no key/value units")

    def attack_contexts(self, params: Params, weights: list[str]) -> Any:
        """Forget-prompt conditioning that gives the key/value projections `weights` at `params` what the original
        ones computed for the concept (attack-aware rounds); objectives with a key/value map have it."""
        raise NotImplementedError(f"{type(self).__name__} has no contexts to attack")

    def under_attack(self, contexts: Any) -> "Objective":
        """This objective with the forget prompts conditioned by `contexts` (from `attack_contexts`)."""
        raise NotImplementedError(f"{type(self).__name__} has no contexts to attack")

    def run_retain(self, params: Params) -> None:
        """One forward pass over the retain data that reaches every candidate layer (for input statistics)."""
        for batch in self.batches("retain"):
            self.retain_outputs(params, batch)
