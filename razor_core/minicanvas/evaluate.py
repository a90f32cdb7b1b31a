"""UnlearnCanvas metrics on MiniCanvas: UA, IRA, CRA, generation accuracy and CLIP zero-shot accuracy.

Definitions (UnlearnCanvas, Zhang et al. 2024), for a target concept c of domain D (style or object), over an answer
set generated from the full styles x objects grid with fixed prompts and seeds:
- UA  = % of images whose prompt involves c that the D-classifier does *not* label c;
- IRA = % of images whose prompt involves another concept of D that the D-classifier labels correctly;
- CRA = % of images whose prompt does not involve c that the other domain's classifier labels correctly.
  (Decided here: images of the target itself are left out of CRA, so CRA measures pure retention.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from . import data, text

EVAL_SEEDS = (188, 288, 588, 688, 888)  # UnlearnCanvas's answer-set seeds
DOMAINS = ("style", "object")


@dataclass
class AnswerSet:
    """Generated images with the labels of the prompts that produced them, and the classifiers' verdicts."""
    images: torch.Tensor          # (N, 3, 32, 32) in [-1, 1]
    styles: np.ndarray            # (N,) prompt's style
    objects: np.ndarray           # (N,) prompt's object
    pred_styles: np.ndarray
    pred_objects: np.ndarray


def grid_prompts(seeds: tuple[int, ...] = EVAL_SEEDS, template: str = data.EVAL_TEMPLATE):
    """Every (style, object) cell once per seed: prompts, seeds and labels."""
    prompts, seed_list, styles, objects = [], [], [], []
    for si, style in enumerate(data.STYLES):
        for oi, obj in enumerate(data.OBJECTS):
            for seed in seeds:
                prompts.append(template.format(style=style, object=obj))
                seed_list.append(seed * 1000 + si * 16 + oi)  # distinct noise per cell and seed
                styles.append(si)
                objects.append(oi)
    return prompts, seed_list, np.array(styles), np.array(objects)


@torch.no_grad()
def classify(classifier: torch.nn.Module, images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    return torch.cat([classifier(images[i:i + batch_size]).argmax(-1)
                      for i in range(0, len(images), batch_size)]).numpy()


def answer_set(sample: Callable[[list[str], list[int]], torch.Tensor], style_clf: torch.nn.Module,
               object_clf: torch.nn.Module, seeds: tuple[int, ...] = EVAL_SEEDS,
               template: str = data.EVAL_TEMPLATE) -> AnswerSet:
    """Generate the grid with any prompts->images function and judge every image."""
    prompts, seed_list, styles, objects = grid_prompts(seeds, template)
    images = sample(prompts, seed_list)
    return AnswerSet(images, styles, objects, classify(style_clf, images), classify(object_clf, images))


def _pct(mask: np.ndarray) -> float:
    return float(100.0 * mask.mean()) if mask.size else float("nan")


def unlearning_metrics(answers: AnswerSet, domain: str, target: int) -> dict[str, float]:
    """UA, IRA and CRA (percentages) for forgetting concept `target` of `domain`."""
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
    labels, preds = ((answers.styles, answers.pred_styles) if domain == "style"
                     else (answers.objects, answers.pred_objects))
    other_labels, other_preds = ((answers.objects, answers.pred_objects) if domain == "style"
                                 else (answers.styles, answers.pred_styles))
    is_target = labels == target
    return {
        "ua": _pct(preds[is_target] != target),
        "ira": _pct(preds[~is_target] == labels[~is_target]),
        "cra": _pct(other_preds[~is_target] == other_labels[~is_target]),
    }


def accuracy_report(answers: AnswerSet) -> dict[str, object]:
    """Overall and per-concept generation accuracy, as fractions."""
    report: dict[str, object] = {}
    for domain, labels, preds, names in (("style", answers.styles, answers.pred_styles, data.STYLES),
                                         ("object", answers.objects, answers.pred_objects, data.OBJECTS)):
        report[f"gen_{domain}_acc"] = float((preds == labels).mean())
        report[f"gen_{domain}_acc_per_concept"] = {
            name: float((preds[labels == i] == i).mean()) for i, name in enumerate(names) if (labels == i).any()}
    return report


@torch.no_grad()
def clip_zero_shot(clip_model, tokenizer, images: torch.Tensor, labels: np.ndarray, domain: str) -> np.ndarray:
    """Predicted class per image by cosine similarity to one prompt per concept (the first single-domain template)."""
    names = data.STYLES if domain == "style" else data.OBJECTS
    template = text.STYLE_ONLY_TEMPLATES[0] if domain == "style" else text.OBJECT_ONLY_TEMPLATES[0]
    key = "style" if domain == "style" else "object"
    prompts = [template.format(**{key: n}) for n in names]
    txt = _as_tensor(clip_model.get_text_features(input_ids=text.tokenize(tokenizer, prompts)))
    img = torch.cat([_as_tensor(clip_model.get_image_features(pixel_values=images[i:i + 512]))
                     for i in range(0, len(images), 512)])
    sims = torch.nn.functional.normalize(img, dim=-1) @ torch.nn.functional.normalize(txt, dim=-1).t()
    return sims.argmax(-1).numpy()


def _as_tensor(features) -> torch.Tensor:
    """transformers 5 returns a model output object from get_*_features; older versions a tensor."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output
