"""Unlearn one MiniCanvas concept from a bundled model and measure it (the `unlearn` command)."""
from __future__ import annotations

import resource
import time
from dataclasses import asdict, replace

import numpy as np
import torch

from .. import growth
from ..adapters.minicanvas import MiniCanvasClip, MiniCanvasDiffusion
from ..edit import RazorEdit, fingerprint
from ..forget_set import ForgetSet
from ..objectives.clip import ClipForgetData, ClipObjective
from ..objectives.diffusion import DiffusionObjective, DiffusionSettings
from . import data, evaluate, text
from .classifier import to_model_input
from .pipeline import load_classifier, load_clip, load_pipeline

# Unlearning never sees the evaluation template (TRAIN_TEMPLATES[0]) nor the paraphrases; it sees every other
# training phrasing (the key/value map generalises to a new word order only from several).
UNLEARN_TEMPLATES = data.TRAIN_TEMPLATES[1:]
# Retain prompts rotate through every other template, the forget prompts' own included: an edit protected on one
# phrasing only was seen to break the other concepts under the phrasings it never saw.
RETAIN_TEMPLATES = data.TRAIN_TEMPLATES[1:]


def _retain_prompts(cells: list[tuple[str, str]]) -> list[str]:
    return [RETAIN_TEMPLATES[k % len(RETAIN_TEMPLATES)].format(style=s, object=o) for k, (s, o) in enumerate(cells)]


def list_targets() -> list[str]:
    return [f"style:{s}" for s in data.STYLES] + [f"object:{o}" for o in data.OBJECTS]


def parse_target(target: str) -> tuple[str, int]:
    domain, _, name = target.partition(":")
    names = data.STYLES if domain == "style" else data.OBJECTS if domain == "object" else None
    if names is None or name not in names:
        raise ValueError(f"unknown target {target!r}; choose one of: {', '.join(list_targets())}")
    return domain, names.index(name)


def forget_set_for(domain: str, index: int) -> ForgetSet:
    """Forget prompts name the concept; anchors drop it (the single-domain prompt the model also knows); retain
    prompts cover every other concept of the same domain, plus the empty prompt that guidance relies on."""
    forget, anchor, retain = [], [], [""]
    if domain == "style":
        style = data.STYLES[index]
        for k, obj in enumerate(data.OBJECTS):
            for j, tmpl in enumerate(UNLEARN_TEMPLATES):
                forget.append(tmpl.format(style=style, object=obj))
                anchor.append(text.OBJECT_ONLY_TEMPLATES[(k + j) % len(text.OBJECT_ONLY_TEMPLATES)].format(object=obj))
        retain += _retain_prompts([(s, o) for s in data.STYLES if s != style for o in data.OBJECTS])
        concept = style
    else:
        obj = data.OBJECTS[index]
        for k, style in enumerate(data.STYLES):
            for j, tmpl in enumerate(UNLEARN_TEMPLATES):
                forget.append(tmpl.format(style=style, object=obj))
                anchor.append(text.STYLE_ONLY_TEMPLATES[(k + j) % len(text.STYLE_ONLY_TEMPLATES)].format(style=style))
        retain += _retain_prompts([(s, o) for s in data.STYLES for o in data.OBJECTS if o != obj])
        concept = obj
    return ForgetSet(concept, domain, tuple(forget), tuple(anchor), tuple(retain))


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (read right after unlearning, before evaluation samples)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def edit_from_result(result: growth.GrowthResult, model: torch.nn.Module, concept: str, settings: dict) -> RazorEdit:
    named = dict(model.named_parameters())
    return RazorEdit(
        deltas={k: v.detach().clone() for k, v in result.delta.items()},
        units=result.units, concept=concept, settings=settings,
        base_fingerprint=fingerprint({k: named[k] for k in result.delta}),
        scores=[asdict(s) for s in result.scores], rounds=result.recorded_rounds())


def _denoiser_part(edit: RazorEdit, model: torch.nn.Module) -> RazorEdit:
    """The edit without its text-encoder deltas: what `LoraLoaderModelOnly` applies (the MODEL's part)."""
    deltas = {k: v for k, v in edit.deltas.items() if k.startswith("denoiser.")}
    named = dict(model.named_parameters())
    return replace(edit, deltas=deltas, units=[u for u in edit.units if u.name.startswith("denoiser.")],
                   base_fingerprint=fingerprint({k: named[k] for k in deltas}))


def _evaluate_edit(pipe, adapter, edit: RazorEdit, domain: str, index: int, eval_seeds: tuple[int, ...]):
    backup = edit.apply_to(adapter)
    try:
        answers = evaluate.answer_set(pipe.sample, load_classifier("style"), load_classifier("object"), eval_seeds)
    finally:
        RazorEdit.revert(adapter, backup)
    return answers, evaluate.unlearning_metrics(answers, domain, index)


def unlearn_diffusion(target: str, method: str = "razor", seed: int = 0, granularity: str = "heads",
                      blocks: str = "denoiser", config: growth.RazorConfig | None = None,
                      eval_seeds: tuple[int, ...] = evaluate.EVAL_SEEDS) -> dict:
    """`*_model_only`: the metrics with only the denoiser's part of the edit applied (the text encoder as shipped),
    what a user who loads the edit into the MODEL alone gets."""
    domain, index = parse_target(target)
    torch.manual_seed(seed)
    pipe = load_pipeline()
    adapter = MiniCanvasDiffusion(pipe, granularity, blocks)
    forget_set = forget_set_for(domain, index)
    config = config or growth.RazorConfig(method=method)
    start = time.time()
    objective = DiffusionObjective(adapter, forget_set, DiffusionSettings(seed=seed))
    result = growth.run(objective, config)
    settings = {"method": config.method, "granularity": granularity, "blocks": blocks, "seed": seed,
                "config": asdict(config)}
    edit = edit_from_result(result, adapter, f"{domain}:{forget_set.concept}", settings)
    seconds, peak = time.time() - start, peak_rss_mb()
    answers, metrics = _evaluate_edit(pipe, adapter, edit, domain, index, eval_seeds)
    model_part = _denoiser_part(edit, adapter)
    model_only = metrics if len(model_part.deltas) == len(edit.deltas) else _evaluate_edit(
        pipe, adapter, model_part, domain, index, eval_seeds)[1]  # all in the MODEL: the same images
    return {
        "target": target, "family": "diffusion", "method": config.method, "blocks": blocks, **metrics,
        **{f"{k}_model_only": model_only[k] for k in ("ua", "ira", "cra")},
        "seconds": round(seconds, 2),
        "peak_rss_mb": peak,
        "backward_passes": result.backward_passes, "rounds": len(result.rounds),
        "units": [u.name for u in result.units], "edit_bytes": len(edit.to_bytes()),
        "forget_progress": result.rounds[-1].forget_progress, "retain_drift": result.rounds[-1].retain_drift,
        "round_log": [asdict(r) for r in result.rounds],
        "accuracy_after": evaluate.accuracy_report(answers),
    }


CLIP_TRAIN_PER_CELL = 4
CLIP_HELDOUT_PER_CELL = 10
VALIDATION_INDEX = 10_000  # validation images: train-split indices far from the gradient images
# Extra single-domain phrasings for validation only; evaluation uses the first STYLE/OBJECT_ONLY template.
EXTRA_LABEL_TEMPLATES = {"style": ("{style}", "the {style} style", "{style} style art"),
                         "object": ("{object}", "the {object}", "a drawing of a {object}")}


def _cells(domain: str, index: int, forget: bool) -> list[tuple[int, int]]:
    pos = 0 if domain == "style" else 1
    return [(s, o) for s in range(len(data.STYLES)) for o in range(len(data.OBJECTS))
            if ((s, o)[pos] == index) == forget]


def _images(cells: list[tuple[int, int]], split: str, per_cell: int,
            first: int = 0) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    labels = [(s, o) for s, o in cells for _ in range(per_cell)]
    imgs = [data.render(s, o, first + i, split) for s, o in cells for i in range(per_cell)]
    return to_model_input(torch.from_numpy(np.stack(imgs))), labels


def clip_forget_data(domain: str, index: int) -> ClipForgetData:
    forget_cells, retain_cells = _cells(domain, index, True), _cells(domain, index, False)
    f_img, f_lab = _images(forget_cells, "train", CLIP_TRAIN_PER_CELL)
    r_img, r_lab = _images(retain_cells, "train", 1)
    vf_img, vf_lab = _images(forget_cells, "train", 4, VALIDATION_INDEX)
    vr_img, vr_lab = _images(retain_cells, "train", 2, VALIDATION_INDEX)
    # The concept's own images must stay recognisable in the other domain (a neon star is still a star): they join
    # the retain pairs captioned by the other domain only, and the drift check with their other-domain labels.
    other = "object" if domain == "style" else "style"
    kept_img, kept_lab = _images(forget_cells, "train", 1, 2 * VALIDATION_INDEX)
    other_templates = text.OBJECT_ONLY_TEMPLATES if other == "object" else text.STYLE_ONLY_TEMPLATES
    kept_captions = tuple(other_templates[1 + k % 2].format(**{other: (data.STYLES[s], data.OBJECTS[o])[
        other == "object"]}) for k, (s, o) in enumerate(kept_lab))

    def captions(labels, single_domain: tuple[str, ...]) -> tuple[str, ...]:
        """Full captions, every other one replaced by a single-domain phrasing (as zero-shot labels are written), so
        the losses act on the prompts the concept is recognised by."""
        out = []
        for k, (s, o) in enumerate(labels):
            names = {"style": data.STYLES[s], "object": data.OBJECTS[o]}
            if k % 2:
                key = single_domain[k // 2 % len(single_domain)]
                templates = text.STYLE_ONLY_TEMPLATES if key == "style" else text.OBJECT_ONLY_TEMPLATES
                out.append(templates[1 + k // 4 % 2].format(**{key: names[key]}))
            else:
                out.append(UNLEARN_TEMPLATES[k // 2 % len(UNLEARN_TEMPLATES)].format(**names))
        return tuple(out)

    # Validation phrasings of the labels; the evaluation's own phrasing (template 0) is never used here.
    label_sets, concept, truth = [], [], []
    for pos, (templates, names, key) in enumerate(((text.STYLE_ONLY_TEMPLATES, data.STYLES, "style"),
                                                   (text.OBJECT_ONLY_TEMPLATES, data.OBJECTS, "object"))):
        for template in templates[1:] + EXTRA_LABEL_TEMPLATES[key]:
            label_sets.append(tuple(template.format(**{key: n}) for n in names))
            concept.append(index if key == domain else -1)
            truth.append([cell[pos] for cell in vr_lab] + [cell[pos] if key == other else -1 for cell in vf_lab])
    return ClipForgetData(f_img, captions(f_lab, (domain,)), torch.cat([r_img, kept_img]),
                          captions(r_lab, ("style", "object")) + kept_captions,
                          tuple(label_sets), tuple(concept), vf_img, torch.cat([vr_img, vf_img]),
                          torch.tensor(truth))


def _zero_shot_report(clip_model, tokenizer, domain: str, index: int) -> dict[str, float]:
    images, styles, objects = data.build_split("heldout", CLIP_HELDOUT_PER_CELL)
    x = to_model_input(torch.from_numpy(images))
    own, other = (styles, objects) if domain == "style" else (objects, styles)
    other_domain = "object" if domain == "style" else "style"
    pred = evaluate.clip_zero_shot(clip_model, tokenizer, x, own, domain)
    pred_other = evaluate.clip_zero_shot(clip_model, tokenizer, x, other, other_domain)
    is_target = own == index
    return {"forget_acc": float(100 * (pred[is_target] == index).mean()),
            "retain_acc": float(100 * (pred[~is_target] == own[~is_target]).mean()),
            "cross_acc": float(100 * (pred_other == other).mean())}


def unlearn_clip(target: str, method: str = "razor", seed: int = 0, granularity: str = "heads",
                 blocks: str = "all", config: growth.RazorConfig | None = None) -> dict:
    domain, index = parse_target(target)
    torch.manual_seed(seed)
    clip_model, tokenizer = load_clip()
    before = _zero_shot_report(clip_model, tokenizer, domain, index)
    adapter = MiniCanvasClip(clip_model, tokenizer, granularity, blocks)
    # CLIP keeps the budgets it was measured with (one unit per round).
    config = config or growth.RazorConfig(method=method, drift_tolerance=0.02, forget_target=0.95,
                                          units_per_round=1)
    start = time.time()
    objective = ClipObjective(adapter, clip_forget_data(domain, index))
    result = growth.run(objective, config)
    edit = edit_from_result(result, clip_model, target, {"method": config.method, "granularity": granularity,
                                                       "blocks": blocks, "seed": seed, "config": asdict(config)})
    seconds, peak = time.time() - start, peak_rss_mb()
    backup = edit.apply_to(clip_model)
    try:
        after = _zero_shot_report(clip_model, tokenizer, domain, index)
    finally:
        RazorEdit.revert(clip_model, backup)
    return {
        "target": target, "family": "clip", "method": config.method,
        "forget_acc": after["forget_acc"], "forget_acc_before": before["forget_acc"],
        "chance": 100.0 / (len(data.STYLES) if domain == "style" else len(data.OBJECTS)),
        "retain_acc": after["retain_acc"], "retain_acc_before": before["retain_acc"],
        "cross_acc": after["cross_acc"], "cross_acc_before": before["cross_acc"],
        "seconds": round(seconds, 2),
        "peak_rss_mb": peak,
        "backward_passes": result.backward_passes, "rounds": len(result.rounds),
        "units": [u.name for u in result.units], "edit_bytes": len(edit.to_bytes()),
        "round_log": [asdict(r) for r in result.rounds],
    }
