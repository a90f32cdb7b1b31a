"""The unlearning chain: LoadForgetSet -> ScoreHeads -> GrowEditSet (RAZOR in razor_core; these nodes are thin)."""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import comfy.sample
import comfy.samplers
import torch
from comfy_api.latest import io, ui

from ..razor_core import growth, plots
from ..razor_core.adapters.base import DIFFUSION_BLOCKS, GRANULARITIES
from ..razor_core.edit import RazorEdit
from ..razor_core.forget_set import KINDS, from_text
from ..razor_core.minicanvas import data as minicanvas_data
from ..razor_core.minicanvas.unlearn import forget_set_for
from ..razor_core.objectives.diffusion import DiffusionObjective, DiffusionSettings
from .common import (CATEGORY, FORGET_SET, RAZOR_EDIT, RAZOR_SCORES, ScoredModel, adapter_for, comfy_sampler,
                     gradient_budget_gb, gradients_allowed, image_output, load, progress_reporter,
                     require_finite_inputs, same_objects)

PRESETS = ("custom", "MiniCanvas demo")
MAX_INITIAL_UNITS = 64  # the largest first-round budget Grow Edit Set accepts
DEFAULT_PROMPTS = "a painting in {concept} style\na portrait in {concept} style\na landscape in {concept} style"
DEFAULT_RETAIN = "a painting in impressionist style\na portrait in cubist style\na landscape photo\n"


def _images_to_model_range(images: torch.Tensor | None) -> torch.Tensor | None:
    """IMAGE (B, H, W, 3) in [0, 1] -> (B, 3, H, W) in [-1, 1] (only pixel-space models can use them directly)."""
    return None if images is None else images.movedim(-1, 1).clone() * 2.0 - 1.0


def _check_images_fit(model: Any, forget_set, latent: dict) -> None:
    """Forget images are used as the model's clean samples, so they must have the latent's shape: true for
    pixel-space models (MiniCanvas), not for latent models such as SD1.5 (4 x H/8 x W/8), which would otherwise
    fail deep inside the UNet."""
    if forget_set.images is None:
        return
    expected = tuple(comfy.sample.fix_empty_latent_channels(model, latent["samples"][:1]).shape[1:])
    got = tuple(forget_set.images.shape[1:])
    if got != expected:
        raise ValueError(f"the forget set's images are {got[0]}x{got[1]}x{got[2]} pixels, but this model works on "
                         f"{expected[0]}x{expected[1]}x{expected[2]} latents: images can only be used with "
                         "pixel-space models of that size. Disconnect the images from Load Forget Set (the model "
                         "then draws its own), or resize them to the latent's size for a pixel-space model")


class RazorLoadForgetSet(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RazorLoadForgetSet", display_name="Load Forget Set", category=CATEGORY,
            description=("What to forget, what it should become instead (the anchor), and what must not change. "
                         "Forget prompts invoke the concept; each is paired with an anchor prompt (the same prompt "
                         "with the anchor in place of the concept, or its own after '=>'). Retain prompts name other "
                         "concepts the model must keep drawing as before."),
            inputs=[
                io.String.Input("concept", default="neon", tooltip=(
                    "The style, object or identity to forget, as prompts name it (e.g. 'Van Gogh', 'neon').")),
                io.Combo.Input("kind", options=list(KINDS), default="style", tooltip="What kind of concept it is."),
                io.Combo.Input("preset", options=list(PRESETS), default="custom", tooltip=(
                    "'custom' uses the prompt boxes below. 'MiniCanvas demo' builds the forget, anchor and retain "
                    "prompts for a MiniCanvas style or object (the concept must be one of them; the boxes are "
                    "ignored).")),
                io.String.Input("forget_prompts", default=DEFAULT_PROMPTS, multiline=True, tooltip=(
                    "One prompt per line; {concept} stands for the concept. End a line with '=> anchor prompt' to "
                    "give its anchor explicitly.")),
                io.String.Input("anchor", default="", tooltip=(
                    "What the concept should turn into (e.g. 'a generic', 'photo'); replaces {concept} in lines "
                    "without their own '=>' anchor.")),
                io.String.Input("retain_prompts", default=DEFAULT_RETAIN, multiline=True, tooltip=(
                    "One prompt per line: concepts whose images must stay as they are (neighbours of the concept "
                    "matter most).")),
                io.Image.Input("images", optional=True, tooltip=(
                    "Optional images of the concept (pixel-space models only). Without them, the model generates "
                    "its own forget and retain images.")),
            ],
            outputs=[FORGET_SET.Output(display_name="FORGET_SET", tooltip="The forget set for Score Heads.")],
        )

    @classmethod
    def execute(cls, concept: str, kind: str, preset: str, forget_prompts: str, anchor: str,
                retain_prompts: str, images: torch.Tensor | None = None) -> io.NodeOutput:
        if preset == "MiniCanvas demo":
            names = minicanvas_data.STYLES if kind == "style" else minicanvas_data.OBJECTS
            if kind == "identity" or concept.strip() not in names:
                raise ValueError(f"the MiniCanvas preset knows the {kind if kind != 'identity' else 'style'}s "
                                 f"{', '.join(names)}; got {concept!r} ({kind}). Pick one of them, or choose "
                                 "preset 'custom'")
            return io.NodeOutput(forget_set_for(kind, names.index(concept.strip())))
        return io.NodeOutput(from_text(concept, kind, forget_prompts, anchor, retain_prompts,
                                       _images_to_model_range(images)))


class RazorScoreHeads(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RazorScoreHeads", display_name="Score Heads (RAZOR)", category=CATEGORY,
            description=("Localises the concept without training: gradients of the forget and retain losses at "
                         "the original weights, then a score per attention head (or layer) = how strongly it "
                         "carries the concept relative to its size x how little its forget direction agrees with "
                         "retention. Shows the scores as a heat-map (modules x heads). The model first generates "
                         "its own forget/retain images with the sampler settings below."),
            inputs=[
                io.Model.Input("model", tooltip="The diffusion MODEL to unlearn from (left untouched)."),
                io.Clip.Input("clip", tooltip="Its CLIP: encodes the prompts (and is scored too when blocks is "
                                              "'text_encoder' or 'all')."),
                FORGET_SET.Input("forget_set", tooltip="From Load Forget Set."),
                io.Latent.Input("latent", tooltip=(
                    "An empty latent of the size the model draws (EmptyLatentImage 512x512 for SD1.5, "
                    "EmptyChromaRadianceLatentImage 32x32 for MiniCanvas): the self-generated images' size.")),
                io.Combo.Input("granularity", options=list(GRANULARITIES), default="heads", tooltip=(
                    "heads: one unit per attention head (cross-attention: its key/value rows) plus MLP linears; "
                    "layers: one per attention module (cross-attention: its keys and values) or MLP linear.")),
                io.Combo.Input("blocks", options=list(DIFFUSION_BLOCKS), default="denoiser", tooltip=(
                    "Which towers may be edited. denoiser (default): the edit lives in the MODEL, so it holds with "
                    "any CLIP or conditioning path and loads with LoraLoaderModelOnly; its cross-attention "
                    "keys/values step in closed form. text_encoder / all: the CLIP too (a CLIP edit is lost when "
                    "the MODEL is used with another text encoder).")),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, tooltip=(
                    "Seed of the self-generated images and of the noise the losses use (same seed, same scores).")),
                io.Int.Input("steps", default=20, min=1, max=200, tooltip="Sampler steps for self-generated images."),
                io.Float.Input("cfg", default=4.0, min=0.0, max=30.0, step=0.1, tooltip=(
                    "Guidance scale for self-generated images (as in KSampler).")),
                io.Combo.Input("sampler_name", options=list(comfy.samplers.KSampler.SAMPLERS), default="euler",
                               tooltip="Sampler for self-generated images."),
                io.Combo.Input("scheduler", options=list(comfy.samplers.KSampler.SCHEDULERS), default="simple",
                               tooltip="Scheduler for self-generated images."),
            ],
            outputs=[RAZOR_SCORES.Output(display_name="RAZOR_SCORES", tooltip="Scores (and the data behind them) "
                                                                                "for Grow Edit Set."),
                     io.Image.Output(display_name="heatmap", tooltip="log10 score per module (rows) and head "
                                                                      "(columns); the initial edit set is outlined.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model: Any, clip: Any, forget_set, latent: dict, granularity: str, blocks: str, seed: int,
                steps: int, cfg: float, sampler_name: str, scheduler: str) -> io.NodeOutput:
        require_finite_inputs(cfg=cfg)
        _check_images_fit(model, forget_set, latent)
        progress = progress_reporter(2)
        with gradients_allowed():
            load(model, clip)
            sampler = comfy_sampler(model, clip, latent, steps, cfg, sampler_name, scheduler)
            adapter = adapter_for(model, clip, sampler, granularity, blocks)
            # At most 64 samples per gradient micro-batch: every call through ComfyUI's apply_model has a fixed cost,
            # and the demo took 43 s with 64 against 67 s with 16 (2 CPU cores). Large models on a GPU get fewer:
            # batches that run out of memory halve (razor_core/batching.py).
            objective = DiffusionObjective(adapter, forget_set, DiffusionSettings(seed=seed, micro_batch=64))
            progress(1, 2, "gradients")
            scoring = growth.score(objective, growth.RazorConfig(max_initial_units=MAX_INITIAL_UNITS,
                                                                 gradient_budget_gb=gradient_budget_gb(model)))
        progress(2, 2, "done")
        initial = growth.initial_sets(adapter.units(), scoring.scores, growth.RazorConfig())
        heat = image_output(plots.score_heatmap(scoring.scores, {u.name for s in initial for u in s},
                                                f"{forget_set.concept}: unit scores"))
        # Only the gradients Grow Edit Set's round 0 can use: ComfyUI keeps this output cached (and on the device).
        kept = growth.for_round_zero(scoring, adapter.units(), MAX_INITIAL_UNITS)
        scored = ScoredModel(objective, kept, forget_set, (model, clip), granularity, blocks)
        return io.NodeOutput(scored, heat, ui=ui.PreviewImage(heat, cls=cls))


class RazorGrowEditSet(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="RazorGrowEditSet", display_name="Grow Edit Set (RAZOR)", category=CATEGORY,
            description=("Unlearns: edits the best-scoring units with one regularised step each (ascent on the "
                         "forget loss, descent on retention, a drift penalty), the step size searched so retain "
                         "prompts stay within the tolerance; adds the best remaining unit and steps again until the "
                         "concept is gone (forget target) or the round budget is spent. Outputs the edit (apply it "
                         "with Apply RAZOR Edit), the growth curve and a report. method 'slug' is the SLUG baseline "
                         "(one layer, one forget-only step)."),
            inputs=[
                io.Model.Input("model", tooltip="The same MODEL that Score Heads scored (left untouched)."),
                io.Clip.Input("clip", tooltip="The same CLIP that Score Heads used."),
                FORGET_SET.Input("forget_set", tooltip="The same forget set that Score Heads used."),
                RAZOR_SCORES.Input("scores", tooltip="From Score Heads."),
                io.Combo.Input("method", options=["razor", "slug"], default="razor", tooltip=(
                    "razor: growing set, regularised steps. slug: the SLUG baseline.")),
                io.Int.Input("max_initial_units", default=3, min=1, max=MAX_INITIAL_UNITS, tooltip=(
                    "At most this many units in the first round (those scoring at least half the best). "
                    "Cross-attention keys/values, stepped in closed form, start all together.")),
                io.Int.Input("max_rounds", default=6, min=1, max=32, tooltip=(
                    "Round budget: each round adds the eight best-scoring units and takes one step.")),
                io.Float.Input("forget_target", default=0.8, min=0.05, max=1.0, step=0.01, tooltip=(
                    "Stop once forget progress reaches this (0: untouched, ~0.75: the concept prompt draws like "
                    "the anchor, 1: fully past it).")),
                io.Float.Input("retain_tolerance", default=0.05, min=0.001, max=1.0, step=0.001, tooltip=(
                    "How far retain prompts may drift, relative to the forget change (smaller keeps more, "
                    "forgets less per round).")),
            ],
            outputs=[RAZOR_EDIT.Output(display_name="RAZOR_EDIT", tooltip="The edit: apply or save it."),
                     io.Image.Output(display_name="growth", tooltip="Forget progress and retain drift per round."),
                     io.String.Output(display_name="report", tooltip="What was edited and measured, as text.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model: Any, clip: Any, forget_set, scores: ScoredModel, method: str, max_initial_units: int,
                max_rounds: int, forget_target: float, retain_tolerance: float) -> io.NodeOutput:
        require_finite_inputs(forget_target=forget_target, retain_tolerance=retain_tolerance)
        if not same_objects(scores.models, (model, clip)):
            raise ValueError("these scores were computed on another MODEL/CLIP (or before more patches were "
                             "added): connect the same MODEL and CLIP to Score Heads and Grow Edit Set")
        if scores.forget_set != forget_set:
            raise ValueError("these scores were computed for another forget set: connect the same Load Forget Set "
                             "to Score Heads and Grow Edit Set")
        config = growth.RazorConfig(method=method, max_initial_units=max_initial_units, max_rounds=max_rounds,
                                    forget_target=forget_target, drift_tolerance=retain_tolerance,
                                    gradient_budget_gb=gradient_budget_gb(model))
        adapter = scores.objective.model
        with gradients_allowed():
            load(model, clip)
            result = growth.run(scores.objective, config, progress_reporter(config.max_rounds), scores.scoring)
        settings = {"method": method, "granularity": scores.granularity, "blocks": scores.blocks,
                    "config": asdict(config), "forget_prompts": list(forget_set.forget_prompts),
                    "anchor_prompts": list(forget_set.anchor_prompts), "retain_prompts": len(forget_set.retain_prompts)}
        edit = RazorEdit(
            deltas={k: v.detach().cpu().clone() for k, v in result.delta.items()}, units=result.units,
            concept=f"{forget_set.kind}:{forget_set.concept}", settings=settings,
            base_fingerprint=adapter.fingerprint(list(result.delta)),
            scores=[asdict(s) for s in result.scores], rounds=result.recorded_rounds())
        curve = image_output(plots.growth_curve([r.forget_progress for r in result.rounds],
                                                [r.retain_drift for r in result.rounds], forget_target,
                                                retain_tolerance, f"{forget_set.concept}: growth"))
        report = growth_report(result, forget_set.concept)
        return io.NodeOutput(edit, curve, report, ui=ui.PreviewImage(curve, cls=cls))


def growth_report(result: growth.GrowthResult, concept: str) -> str:
    last = result.rounds[-1]
    lines = [f"RAZOR ({result.config.method}) forgot {concept!r} in {len(result.rounds)} round(s), "
             f"{result.backward_passes} backward passes.",
             f"forget progress {result.before.forget_progress:.3f} -> {last.forget_progress:.3f} "
             f"(target {result.config.forget_target}); retain drift {last.retain_drift:.4f} "
             f"(tolerance {result.config.drift_tolerance})",
             "edited units: " + ", ".join(u.name for u in result.units)]
    for r in result.rounds:
        lines.append(f"round {r.round + 1} ({r.step.replace('_', ' ')}): "
                     + ("+" + ", ".join(r.added) + ", " if r.added else "")
                     + f"forget {r.forget_progress:.3f}, drift {r.retain_drift:.4f}, step {r.scale:.4g}")
    lines.append("settings: " + json.dumps({"alpha": result.config.alpha, "threshold": result.config.threshold,
                                            "damping": result.config.damping}))
    return "\n".join(lines)


NODES = [RazorLoadForgetSet, RazorScoreHeads, RazorGrowEditSet]
