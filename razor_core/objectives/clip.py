"""CLIP objective (SLUG's losses, RAZOR's regulariser).

Forget: 1 − cos(image, caption) over forget pairs, which the step increases (pushes the pairs apart).
Retain: symmetric InfoNCE over retain pairs; captions that are equal count as positives of each other.
Mismatch: drift of the retain image–text cosine matrix from the frozen model's.
Validation (the model's own zero-shot, no external classifier): forget progress from the margin of the concept's
label over the best other label on held-out forget images, averaged over several phrasings of the labels (1 once
every margin is below −δ); retain drift as the fraction of held-out retain images whose zero-shot label changed,
over every label set given (only the ones that were right, where labels are known).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..batching import halve
from ..objective import Objective, Params, Validation
from ..units import EditUnit

MARGIN_DELTA = 0.02


class ClipModel(Protocol):
    image_prefix: str      # parameter-name prefix of the vision tower
    text_prefix: str       # ... and of the text tower

    def units(self) -> list[EditUnit]: ...
    def base_params(self, units: list[EditUnit]) -> Params: ...
    def image_features(self, params: Params, pixels: torch.Tensor) -> torch.Tensor: ...
    def text_features(self, params: Params, prompts: list[str]) -> torch.Tensor: ...
    def logit_scale(self) -> float: ...
    def params_root(self) -> nn.Module: ...


@dataclass(frozen=True)
class ClipForgetData:
    forget_images: torch.Tensor
    forget_captions: tuple[str, ...]
    retain_images: torch.Tensor
    retain_captions: tuple[str, ...]
    label_sets: tuple[tuple[str, ...], ...]      # zero-shot label prompts: one tuple per domain and phrasing
    concept_labels: tuple[int, ...]              # per label set: the concept's index, or -1 if not in that set
    val_forget_images: torch.Tensor
    val_retain_images: torch.Tensor
    # Per label set, the true label index of each validation retain image (-1 where unknown). With labels, drift
    # counts only predictions that were right and became wrong; without, any changed prediction.
    val_retain_labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if len(self.forget_images) == 0 or len(self.forget_images) != len(self.forget_captions):
            raise ValueError("give at least one forget image and exactly one caption per forget image")
        if len(self.retain_images) < 2 or len(self.retain_images) != len(self.retain_captions):
            raise ValueError("give at least two retain images and exactly one caption per retain image")
        if all(c < 0 for c in self.concept_labels):
            raise ValueError("the concept is in none of the label sets, so forgetting cannot be measured")


def _normed(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


class ClipObjective(Objective):
    def __init__(self, model: ClipModel, data: ClipForgetData, micro_batch: int = 64):
        self.model, self.data, self.micro_batch = model, data, micro_batch
        self._units = model.units()
        self._theta0 = model.base_params(self._units)
        self._cache: dict[tuple[str, int], torch.Tensor] = {}
        with torch.no_grad():
            self._retain_sims0 = self._sims(self._theta0, data.retain_images, list(data.retain_captions))
            self._forget_margin0 = self._margins(self._theta0, data.val_forget_images)
            self._retain_preds0 = self._predictions(self._theta0, data.val_retain_images)
        labels = data.val_retain_labels
        self._watched = (self._retain_preds0 == labels) if labels is not None else torch.ones_like(
            self._retain_preds0, dtype=torch.bool)

    def _frozen(self, params: Params, tower: str) -> bool:
        """True when no parameter of `tower` differs from θ⁰ (steps leave untouched tensors as the same object)."""
        return all(v is self._theta0[k] for k, v in params.items() if k.startswith(tower))

    def _cached(self, key: tuple[str, int], compute):
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def _image(self, params: Params, images: torch.Tensor) -> torch.Tensor:
        def compute() -> torch.Tensor:
            return torch.cat([_normed(self.model.image_features(params, images[i:i + self.micro_batch]))
                              for i in range(0, len(images), self.micro_batch)])
        if self._frozen(params, self.model.image_prefix) and not torch.is_grad_enabled():
            return self._cached(("image", id(images)), compute)
        return compute()

    def _text(self, params: Params, prompts: list[str]) -> torch.Tensor:
        def compute() -> torch.Tensor:
            return _normed(self.model.text_features(params, prompts))
        if self._frozen(params, self.model.text_prefix) and not torch.is_grad_enabled():
            return self._cached(("text", hash(tuple(prompts))), compute)
        return compute()

    def _sims(self, params: Params, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        return self._image(params, images) @ self._text(params, captions).t()

    def _label_scores(self, params: Params, images: torch.Tensor) -> list[torch.Tensor]:
        img = self._image(params, images)
        return [img @ self._text(params, list(labels)).t() for labels in self.data.label_sets]

    def _margins(self, params: Params, images: torch.Tensor) -> torch.Tensor:
        """Concept label's cosine minus the best other label's: (label sets containing the concept, images)."""
        margins = []
        for sims, c in zip(self._label_scores(params, images), self.data.concept_labels):
            if c < 0:
                continue
            others = torch.cat([sims[:, :c], sims[:, c + 1:]], dim=1)
            margins.append(sims[:, c] - others.max(dim=1).values)
        return torch.stack(margins)

    def _predictions(self, params: Params, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([s.argmax(-1) for s in self._label_scores(params, images)])

    # ---------------------------------------------------------------------------------------------- Objective
    def units(self) -> list[EditUnit]:
        return self._units

    def base_params(self) -> Params:
        return self._theta0

    def batches(self, split: str) -> Iterator[slice]:
        n = len(self.data.forget_images if split == "forget" else self.data.retain_images)
        for s in range(0, n, self.micro_batch):
            yield slice(s, s + self.micro_batch)

    def smaller_batches(self) -> bool:
        return halve(self, "micro_batch")

    def forget_loss(self, params: Params, batch: slice) -> torch.Tensor:
        img = _normed(self.model.image_features(params, self.data.forget_images[batch]))
        txt = self._text(params, list(self.data.forget_captions[batch]))
        return (1.0 - (img * txt).sum(-1)).mean()

    def retain_loss(self, params: Params, batch: slice) -> torch.Tensor:
        captions = list(self.data.retain_captions[batch])
        img = _normed(self.model.image_features(params, self.data.retain_images[batch]))
        logits = self.model.logit_scale() * img @ self._text(params, captions).t()
        same = torch.tensor([[a == b for b in captions] for a in captions], dtype=logits.dtype,
                            device=logits.device)
        targets = same / same.sum(1, keepdim=True)
        return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))

    def retain_outputs(self, params: Params, batch: slice) -> torch.Tensor:
        return (_normed(self.model.image_features(params, self.data.retain_images[batch]))
                @ self._text(params, list(self.data.retain_captions)).t())

    def module_root(self) -> nn.Module | None:
        return self.model.params_root()

    def run_retain(self, params: Params) -> None:
        for batch in self.batches("retain"):
            self.model.image_features(params, self.data.retain_images[batch])
        self.model.text_features(params, list(self.data.retain_captions))

    def mismatch_loss(self, params: Params, batch: slice) -> torch.Tensor:
        return (self.retain_outputs(params, batch) - self._retain_sims0[batch]).pow(2).mean()

    def validate(self, params: Params) -> Validation:
        progress, drift = self.validate_forget_first(params)
        return Validation(progress, drift())

    def validate_forget_first(self, params: Params) -> tuple[float, Callable[[], float]]:
        m0 = self._forget_margin0
        m = self._margins(params, self.data.val_forget_images)
        progress = ((m0 - m) / (m0.clamp(min=0) + MARGIN_DELTA)).clamp(0, 1).mean()

        def drift() -> float:
            changed = self._predictions(params, self.data.val_retain_images) != self._retain_preds0
            return float((changed & self._watched).float().sum() / max(1, int(self._watched.sum())))
        return float(progress), drift
