"""FORGET_SET: what to forget, what to map it to, and what to keep."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

KINDS = ("style", "object", "identity")


@dataclass(frozen=True)
class ForgetSet:
    concept: str
    kind: str
    forget_prompts: tuple[str, ...]          # prompts that invoke the concept
    anchor_prompts: tuple[str, ...]          # same prompts with the concept replaced by the anchor (aligned 1:1)
    retain_prompts: tuple[str, ...]          # other concepts whose behaviour must not change
    images: torch.Tensor | None = field(default=None, compare=False)  # optional (N, 3, H, W) in [-1, 1]

    def __post_init__(self) -> None:
        if not self.concept.strip():
            raise ValueError("the concept is empty: name the style, object or identity to forget")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not self.forget_prompts:
            raise ValueError(f"no forget prompts for {self.concept!r}: give at least one prompt that uses it")
        if len(self.anchor_prompts) != len(self.forget_prompts):
            raise ValueError(f"{len(self.anchor_prompts)} anchor prompts for {len(self.forget_prompts)} forget "
                             "prompts: give one anchor prompt per forget prompt")
        if not self.retain_prompts:
            raise ValueError("no retain prompts: give prompts of concepts to keep, or choose a preset")
        overlap = set(self.forget_prompts) & set(self.retain_prompts)
        if overlap:
            raise ValueError(f"prompts {sorted(overlap)[:3]} are both forget and retain prompts; remove them from "
                             "one of the lists")
        if self.images is not None:
            if self.images.ndim != 4 or self.images.shape[1] != 3:
                raise ValueError(f"forget images must be (N, 3, H, W); got shape {tuple(self.images.shape)}")
            if not torch.isfinite(self.images).all():
                raise ValueError("forget images contain NaN or inf values; fix or drop those images")
