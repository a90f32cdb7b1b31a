"""FORGET_SET: what to forget, what to map it to, and what to keep."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

KINDS = ("style", "object", "identity")
EMPTY_CONCEPT = "the concept is empty: name the style, object or identity to forget"


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
            raise ValueError(EMPTY_CONCEPT)
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
                raise ValueError(f"forget images must be RGB, (N, 3, H, W); got shape {tuple(self.images.shape)}: "
                                 "drop the alpha channel or convert the images to RGB")
            if len(self.images) == 0:
                raise ValueError("the forget image batch is empty: connect at least one image, or disconnect the "
                                 "input so that the model draws its own")
            if not torch.isfinite(self.images).all():
                raise ValueError("forget images contain NaN or inf values; fix or drop those images")


ANCHOR_SEPARATOR = "=>"
PLACEHOLDER = "{concept}"


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def from_text(concept: str, kind: str, prompts: str, anchor: str, retain: str,
              images: torch.Tensor | None = None) -> ForgetSet:
    """A ForgetSet from the text a user types: one forget prompt per line of `prompts`, where `{concept}` stands for
    the concept; a line may name its own anchor prompt after `=>`, otherwise its anchor is the same line with
    `anchor` in place of the concept. `retain` holds one prompt per line."""
    concept = concept.strip()
    if not concept:
        raise ValueError(EMPTY_CONCEPT)
    forget, anchors = [], []
    for number, line in enumerate(_lines(prompts), start=1):
        prompt, _, own_anchor = (part.strip() for part in line.partition(ANCHOR_SEPARATOR))
        prompt = re.sub(re.escape(concept), PLACEHOLDER, prompt, flags=re.IGNORECASE)  # typed out = placeholder
        if PLACEHOLDER not in prompt:
            raise ValueError(f"forget prompt line {number} ({prompt!r}) mentions neither {PLACEHOLDER} nor "
                             f"{concept!r}: every forget prompt must invoke the concept")
        if not own_anchor and not anchor.strip():
            raise ValueError(f"forget prompt line {number} has no anchor: type an anchor concept (what "
                             f"{concept!r} should become), or end the line with '{ANCHOR_SEPARATOR} anchor prompt'")
        forget.append(prompt.replace(PLACEHOLDER, concept))
        anchors.append(own_anchor.replace(PLACEHOLDER, anchor.strip()) if own_anchor
                       else prompt.replace(PLACEHOLDER, anchor.strip()))
    return ForgetSet(concept, kind, tuple(forget), tuple(anchors), tuple(_lines(retain)), images)
