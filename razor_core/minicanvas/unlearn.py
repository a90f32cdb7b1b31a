"""Unlearn one MiniCanvas concept from a bundled model and measure it (the `unlearn` command)."""
from __future__ import annotations

import resource
import time
from dataclasses import asdict

import torch

from .. import growth
from ..adapters.minicanvas import MiniCanvasDiffusion
from ..edit import RazorEdit, fingerprint
from ..forget_set import ForgetSet
from ..objectives.diffusion import DiffusionObjective, DiffusionSettings
from . import data, evaluate, text
from .pipeline import load_classifier, load_pipeline

# Unlearning never sees the evaluation template (TRAIN_TEMPLATES[0]) nor the paraphrases.
UNLEARN_TEMPLATES = data.TRAIN_TEMPLATES[1:3]
RETAIN_TEMPLATE = data.TRAIN_TEMPLATES[3]


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
        retain += [RETAIN_TEMPLATE.format(style=s, object=o) for s in data.STYLES if s != style for o in data.OBJECTS]
        concept = style
    else:
        obj = data.OBJECTS[index]
        for k, style in enumerate(data.STYLES):
            for j, tmpl in enumerate(UNLEARN_TEMPLATES):
                forget.append(tmpl.format(style=style, object=obj))
                anchor.append(text.STYLE_ONLY_TEMPLATES[(k + j) % len(text.STYLE_ONLY_TEMPLATES)].format(style=style))
        retain += [RETAIN_TEMPLATE.format(style=s, object=o) for s in data.STYLES for o in data.OBJECTS if o != obj]
        concept = obj
    return ForgetSet(concept, domain, tuple(forget), tuple(anchor), tuple(retain))


def edit_from_result(result: growth.GrowthResult, adapter: torch.nn.Module, forget_set: ForgetSet,
                     settings: dict) -> RazorEdit:
    named = dict(adapter.named_parameters())
    return RazorEdit(
        deltas={k: v.detach().clone() for k, v in result.delta.items()},
        units=result.units, concept=f"{forget_set.kind}:{forget_set.concept}", settings=settings,
        base_fingerprint=fingerprint({k: named[k] for k in result.delta}),
        scores=[asdict(s) for s in result.scores], rounds=[asdict(r) for r in result.rounds])


def unlearn_diffusion(target: str, method: str = "razor", seed: int = 0, granularity: str = "heads",
                      blocks: str = "all", config: growth.RazorConfig | None = None,
                      eval_seeds: tuple[int, ...] = evaluate.EVAL_SEEDS) -> dict:
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
    edit = edit_from_result(result, adapter, forget_set, settings)
    seconds = time.time() - start
    backup = edit.apply_to(adapter)
    try:
        answers = evaluate.answer_set(pipe.sample, load_classifier("style"), load_classifier("object"), eval_seeds)
    finally:
        RazorEdit.revert(adapter, backup)
    metrics = evaluate.unlearning_metrics(answers, domain, index)
    return {
        "target": target, "family": "diffusion", "method": config.method, **metrics,
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "backward_passes": result.backward_passes, "rounds": len(result.rounds),
        "units": [u.name for u in result.units], "edit_bytes": len(edit.to_bytes()),
        "forget_progress": result.rounds[-1].forget_progress, "retain_drift": result.rounds[-1].retain_drift,
        "round_log": [asdict(r) for r in result.rounds],
    }
