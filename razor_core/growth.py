"""The RAZOR loop: score once at θ⁰, edit a small set with one regularised step, grow the set until forgotten.

    round 0: gradients at θ⁰ → scores φ → per tower, a candidate initial set K = its units with φ ≥ τ·(the tower's
             max φ) (at most `max_initial_units`); the candidate whose step forgets most on the search's coarse
             grid is kept (and only its step refined)
    each round: direction at the current weights → step size by search → Δ += step
    if forget progress < target and rounds remain: re-score on the edited model, add the best unedited unit

SLUG is the special case `method="slug"`: one whole layer from the Pareto front of (importance, |cos|) (per tower,
the better one kept, as SLUG's authors pick among the towers' Pareto layers), a forget-only step (λ_r = λ_m = 0),
no growth.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import torch

from .gradients import Gradients, compute_gradients, mismatch_gradients
from .objective import Objective, Params, Validation, require_finite
from .preconditioner import InputMoments, precondition, retain_input_moments
from .scoring import UnitScore, pareto_front, score_units
from .update import START_SCALE, StepSearch, StepWeights, add, directions, refine_units, step_delta
from .units import EditUnit

STALL = 0.01  # a round that improves forget progress by less than this ends the growth


@dataclass(frozen=True)
class RazorConfig:
    method: str = "razor"             # "razor" or "slug"
    alpha: float = 1.0                # exponent of the alignment term in φ
    threshold: float = 0.5            # τ, relative to the best score, for the initial set
    max_initial_units: int = 3
    max_rounds: int = 6
    forget_target: float = 0.8        # forget progress (validation) that ends the growth (0.75 ≈ draws like the anchor)
    drift_tolerance: float = 0.05     # retain drift allowed by the step-size search
    retain_sketch: int = 0            # random retain-output projections to keep steps orthogonal to (0: off)
    precondition: bool = True         # shape steps by the edited layers' retain inputs (see preconditioner.py)
    damping: float = 0.001            # ridge of that preconditioner, relative to the mean input energy (small, so
                                      # steps stay on inputs retain data never uses; 0.1 let them reach retain ones)
    weights: StepWeights = field(default_factory=StepWeights)

    def __post_init__(self) -> None:
        if self.method not in ("razor", "slug"):
            raise ValueError(f"method must be 'razor' or 'slug', got {self.method!r}")
        if self.max_rounds < 1 or self.max_initial_units < 1:
            raise ValueError("max_rounds and max_initial_units must be at least 1 (they are budgets)")
        if not 0.0 < self.forget_target <= 1.0:  # written so that NaN fails too
            raise ValueError(f"forget_target must be in (0, 1], got {self.forget_target}")
        for name, rule in (("alpha", ">= 0"), ("threshold", ">= 0"), ("damping", "> 0"), ("drift_tolerance", "> 0")):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0 or (rule == "> 0" and value == 0):
                raise ValueError(f"{name} must be a finite number {rule}; got {value}")


@dataclass
class RoundRecord:
    round: int
    units: list[str]
    added: str | None
    scale: float
    etas: dict[str, float]
    forget_progress: float
    retain_drift: float
    probes: int
    seconds: float


@dataclass
class GrowthResult:
    delta: Params                     # total change of every touched parameter (full shape)
    units: list[EditUnit]             # the edit set, in the order units were added
    scores: list[UnitScore]           # round-0 scores of every candidate
    rounds: list[RoundRecord]
    backward_passes: int
    config: RazorConfig
    before: Validation

    def recorded_rounds(self) -> list[dict]:
        """Per-round metrics as edit files keep them: without wall-clock seconds, so that the same inputs and seed
        always give a byte-identical file."""
        return [{k: v for k, v in asdict(r).items() if k != "seconds"} for r in self.rounds]


def tower(unit: EditUnit) -> str:
    """Unit names start with their tower (e.g. `text_model.…`, `denoiser.…`)."""
    return unit.name.split(".", 1)[0]


def initial_sets(units: list[EditUnit], scores: list[UnitScore], config: RazorConfig) -> list[list[EditUnit]]:
    """One candidate initial set per tower. Gradient/weight ratios are not comparable across towers (SLUG ranks each
    tower on its own too), so each tower's best units are chosen against that tower's best score, and round 0 keeps
    the candidate whose step forgets most within the retain tolerance."""
    by_name = {u.name: u for u in units}
    sets = []
    for name in dict.fromkeys(tower(u) for u in units):
        own = [s for s in scores if tower(by_name[s.unit]) == name]
        if config.method == "slug":
            layers = [s for s in own if by_name[s.unit].kind != "head"]
            front = pareto_front(layers or own)
            sets.append([by_name[max(front, key=lambda s: s.importance).unit]])
            continue
        ranked = sorted(own, key=lambda s: s.score, reverse=True)
        if ranked[0].score <= 0:
            continue  # the tower does not carry the concept at all
        chosen = [s for s in ranked if s.score >= config.threshold * ranked[0].score][:config.max_initial_units]
        sets.append([by_name[s.unit] for s in chosen])
    return sets or [[by_name[max(scores, key=lambda s: s.score).unit]]]


def _preconditions(objective: Objective, config: RazorConfig) -> bool:
    """Whether steps get the retain-aware shaping: not when off, for SLUG, or when the objective cannot expose its
    layers' inputs."""
    return config.method == "razor" and config.precondition and objective.module_root() is not None


def _input_recorder(objective: Objective, units: list[EditUnit], config: RazorConfig) -> InputMoments | None:
    """What records the preconditioner's retain input moments of `units` during a pass (None without shaping)."""
    return InputMoments(objective.module_root(), units) if _preconditions(objective, config) else None


def preconditioner_for(objective: Objective, units: list[EditUnit], params: Params, config: RazorConfig,
                       moments: dict[str, torch.Tensor] | None = None):
    """The retain-aware shaping of the directions of `units` at `params`, from `moments` recorded there or, without
    them, from a retain pass of its own (None without shaping)."""
    if not _preconditions(objective, config):
        return None
    if moments is None:
        moments = retain_input_moments(objective.module_root(), units, lambda: objective.run_retain(params))
    shapes = {k: v.shape for k, v in params.items()}
    return lambda unit, d: precondition(unit, d, shapes, moments, config.damping)


@dataclass
class Scoring:
    """Round 0's localisation (zero optimisation steps): gradients at θ⁰ and every candidate's score."""
    gradients: Gradients
    scores: list[UnitScore]
    before: Validation
    config: RazorConfig


def for_round_zero(scoring: Scoring, units: list[EditUnit], max_initial_units: int) -> Scoring:
    """`scoring` with the gradients of just the units round 0 can start from, with either method and any budget up to
    `max_initial_units` (growth rounds compute their own): what a scoring kept for later needs. All of them would be
    two float32 copies of every candidate (2.6 GB for SD1.5), held as long as ComfyUI caches Score Heads' output."""
    starts = [replace(scoring.config, method=m, max_initial_units=max_initial_units) for m in ("razor", "slug")]
    keep = {p for config in starts for s in initial_sets(units, scoring.scores, config) for u in s for p in u.params}
    grads = scoring.gradients

    def kept(params: Params) -> Params:
        return {k: v for k, v in params.items() if k in keep}
    return replace(scoring, gradients=replace(grads, forget=kept(grads.forget), retain=kept(grads.retain),
                                              retain_sketch=[kept(p) for p in grads.retain_sketch]))


def score(objective: Objective, config: RazorConfig = RazorConfig()) -> Scoring:
    """Gradients once at θ⁰ and φ for every candidate unit (what ScoreHeads shows; `run` starts from it)."""
    units = objective.units()
    if not units:
        raise ValueError("no candidate units: the chosen blocks/granularity select nothing in this model")
    theta0 = objective.base_params()
    with torch.no_grad():
        before = objective.validate(theta0)
    sketch = config.retain_sketch if config.method == "razor" else 0
    grads = compute_gradients(objective, theta0, sketch_size=sketch)
    require_finite({**{f"forget {k}": v for k, v in grads.forget.items()},
                    **{f"retain {k}": v for k, v in grads.retain.items()}}, "the gradients",
                   "the losses overflow on this model; check its weights, or use float32 weights")
    return Scoring(grads, score_units(units, theta0, grads.forget, grads.retain, config.alpha), before, config)


def run(objective: Objective, config: RazorConfig = RazorConfig(),
        progress: Callable[[int, int, str], None] | None = None, scoring: Scoring | None = None) -> GrowthResult:
    """Unlearn: returns the accumulated Δ and everything needed to explain it. `scoring` (from `score` on the same
    objective with the same alpha and sketch) saves recomputing round 0's gradients."""
    scoring = scoring or score(objective, config)
    units = objective.units()
    theta0 = objective.base_params()
    weights = config.weights if config.method == "razor" else StepWeights(config.weights.lambda_forget,
                                                                          config.weights.rho, 0.0, 0.0)
    rounds_budget = config.max_rounds if config.method == "razor" else 1
    report = progress or (lambda *_: None)
    sketch = config.retain_sketch if config.method == "razor" else 0
    candidates = initial_sets(units, scoring.scores, config)
    if any(p not in scoring.gradients.forget for s in candidates for u in s for p in u.params):
        scoring = score(objective, config)  # kept (`for_round_zero`) for other settings than these
    grads, scores, before = scoring.gradients, scoring.scores, scoring.before
    backward = grads.backward_passes
    delta: Params = {}
    records: list[RoundRecord] = []
    added: str | None = None
    reached = before
    moments = None
    for r in range(rounds_budget):
        start = time.time()
        report(r, rounds_budget, f"round {r + 1}: stepping {len(candidates[0])} unit(s)")
        current = add(theta0, delta)
        # Growth rounds start their search at half the previous step (steps mostly shrink as the set grows, about
        # halving per round on MiniCanvas; the search goes down as well as up) and must beat what it reached.
        search_from = records[-1].scale / 2.0 if records and records[-1].scale > 0 else START_SCALE
        # One retain pass for every candidate's layers (round 0: one per tower); growth rounds recorded theirs
        # during the mismatch gradient's pass.
        shape = preconditioner_for(objective, [u for c in candidates for u in c], current, config, moments)
        tried = []
        for edit_set in candidates:
            dirs = directions(edit_set, grads, weights, shape)
            search = StepSearch(objective, current, edit_set, dirs, config.drift_tolerance, reached)
            tried.append((edit_set, dirs, search.bracket(start=search_from)))
        # Only the proposal that forgets most on the bracket's grid is refined: bisection, then per-unit steps
        # (every unit in round 0, later only the unit just added).
        edit_set, dirs, search = max(tried, key=lambda t: (t[2].forget_progress, -len(t[0])))
        found = refine_units(objective, current, edit_set, dirs, config.drift_tolerance, search.bisect().result(),
                             [added] if added else [u.name for u in edit_set])
        reached = found.validation  # what the next round's step must improve on
        step = step_delta(edit_set, dirs, current, found.etas)
        for name, t in step.items():
            delta[name] = delta[name] + t if name in delta else t
        records.append(RoundRecord(r, [u.name for u in edit_set], added, found.scale, found.etas,
                                   found.validation.forget_progress, found.validation.retain_drift,
                                   found.probes + sum(t[2].probe.count for t in tried if t[1] is not dirs),
                                   time.time() - start))
        if found.validation.forget_progress >= config.forget_target or r + 1 == rounds_budget:
            break
        if r > 0 and found.validation.forget_progress - records[-2].forget_progress < STALL:
            break  # the last unit added could not move forgetting any further within the retain tolerance
        # Grow: re-score on the edited model and add the best unit not yet edited; the next round's step uses
        # these same gradients, with the mismatch gradient of the units it moves.
        scoring = grads = None  # drop the last gradients (round 0's too) before computing the next: peak memory
        edited = add(theta0, delta)
        grads = compute_gradients(objective, edited, sketch_size=sketch)
        backward += grads.backward_passes
        rescored = score_units(units, edited, grads.forget, grads.retain, config.alpha)
        in_set = {u.name for u in edit_set}
        candidates = [s for s in rescored if s.unit not in in_set]
        if not candidates:
            break
        best = max(candidates, key=lambda s: s.score)
        candidates = [edit_set + [next(u for u in units if u.name == best.unit)]]
        added = best.unit
        moments = None
        # The mismatch gradient's pass over the retain data also records the next step's input moments (saving a
        # forward pass per round; text layers then count each prompt once per micro-batch it is in, not once: a
        # weighting by retain samples, as the denoiser's layers have).
        if weights.lambda_mismatch:
            recorder = _input_recorder(objective, candidates[0], config)
            with recorder or nullcontext():
                grads.mismatch, passes = mismatch_gradients(objective, edited, candidates[0],
                                                            restart=recorder.restart if recorder else lambda: None)
            backward += passes
            if recorder is not None and not recorder.missing():
                moments = recorder.moments()
    report(rounds_budget, rounds_budget, "done")
    return GrowthResult(delta, edit_set, scores, records, backward, config, before)
