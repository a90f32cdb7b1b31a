"""The RAZOR loop: score once at θ⁰, edit a small set with one regularised step, grow the set until forgotten.

    round 0: gradients at θ⁰ → scores φ → per tower, a candidate initial set K = its units with φ ≥ τ·(the tower's
             max φ) (at most `max_initial_units`; a denoiser's: every cross-attention key/value unit with φ > 0);
             the candidate whose step forgets most on the search's coarse grid is kept (and only its step refined)
    each round: direction at the current weights → step size by search → Δ += step. Key/value units first take
             closed-form rounds (towards the map of the concept's keys/values onto the anchor's, kv_map.py); once
             the map is spent, gradient rounds step the whole set
    if forget progress < target and rounds remain: re-score on the edited model, add the best unedited units
    then (`attack_rounds`): attack the edit in context space (the closed-form adversary), solve the key/value map
             on the attacked contexts too, step towards it (attack-aware rounds)

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
from .kv_map import KeyValueMap, is_key_value, key_value_weights, natural_scale
from .objective import Objective, Params, Validation, is_float8, require_finite
from .preconditioner import InputMoments, precondition, retain_input_moments
from .scoring import UnitScore, pareto_front, score_units
from .update import (START_SCALE, StepSearch, StepWeights, accumulate, add, directions, refine_units,
                     search_step, step_delta)
from .units import EditUnit

STALL = 0.01  # a round that improves forget progress by less than this ends the growth


@dataclass(frozen=True)
class RazorConfig:
    method: str = "razor"             # "razor" or "slug"
    alpha: float = 1.0                # exponent of the alignment term in φ
    threshold: float = 0.5            # τ, relative to the best score, for the initial set
    max_initial_units: int = 3        # gradient-stepped proposals (closed-form key/value ones take every such unit)
    max_rounds: int = 6
    units_per_round: int = 8          # how many of the best unedited units a growth round adds (on MiniDiT's
                                      # denoiser one unit moves forget progress by less than the stall rule)
    forget_target: float = 0.8        # forget progress (validation) that ends the growth (0.75 ≈ draws like the anchor)
    drift_tolerance: float = 0.05     # retain drift allowed by the step-size search
    retain_sketch: int = 0            # random retain-output projections to keep steps orthogonal to (0: off)
    precondition: bool = True         # shape steps by the edited layers' retain inputs (see preconditioner.py)
    damping: float = 0.001            # ridge of that preconditioner, relative to the mean input energy (small, so
                                      # steps stay on inputs retain data never uses; 0.1 let them reach retain ones)
    kv_step: str = "closed_form"      # key/value units: "closed_form" steps towards the map of the concept's keys and
                                      # values onto the anchor's (kv_map.py; a tower with key/value units then
                                      # proposes all of them), "gradient" steps them like any other unit
    gradient_after_map: bool = True   # once the closed-form map is spent, gradient rounds step the whole set (and may
                                      # add any unit); False ends the growth there
    refine_limit: int = 32            # round 0 tries its own step for this many of the set's best units (two
                                      # validation probes each; SDXL's closed-form set has ~400 key/value heads,
                                      # MiniCanvas's 24)
    gradient_budget_gb: float | None = None  # most GB of float32 forget + retain gradients held at once while
                                      # scoring: beyond it the candidates are scored in groups that fit, one pass
                                      # each, then the kept units' gradients in one more (None: all in one pass)
    attack_rounds: int = 0            # attack-aware rounds after the growth (closed-form key/value edits of the
                                      # denoiser only): the closed-form context adversary finds the contexts that
                                      # give the edited keys/values the original's, and the map is solved on them
                                      # too (AdvUnlearn's idea, RECE's adversary)
    weights: StepWeights = field(default_factory=StepWeights)

    def __post_init__(self) -> None:
        if self.method not in ("razor", "slug"):
            raise ValueError(f"method must be 'razor' or 'slug', got {self.method!r}")
        if self.kv_step not in ("closed_form", "gradient"):
            raise ValueError(f"kv_step must be 'closed_form' or 'gradient', got {self.kv_step!r}")
        if self.max_rounds < 1 or self.max_initial_units < 1 or self.units_per_round < 1 or self.refine_limit < 0:
            raise ValueError("max_rounds, max_initial_units and units_per_round must be at least 1, refine_limit at "
                             "least 0 (they are budgets)")
        if self.gradient_budget_gb is not None and not self.gradient_budget_gb > 0:
            raise ValueError(f"gradient_budget_gb must be positive (or None), got {self.gradient_budget_gb}")
        if self.attack_rounds < 0:
            raise ValueError(f"attack_rounds must be at least 0, got {self.attack_rounds}")
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
    added: list[str]           # the units this round added (none in round 0)
    step: str                  # "closed_form" (key/value units moved towards their map), "gradient" or "attack"
    scale: float
    etas: dict[str, float]
    forget_progress: float
    retain_drift: float
    probes: int
    seconds: float
    attacked_progress: float | None = None  # "attack" rounds: forget progress under that round's attack


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


def closed_form_steps(config: RazorConfig) -> bool:
    """Whether key/value units step towards their closed-form map (RAZOR only; SLUG takes gradient steps)."""
    return config.method == "razor" and config.kv_step == "closed_form"


def grows_with(edit_set: list[EditUnit], unit: EditUnit, closed_phase: bool) -> bool:
    """Whether `unit` may join `edit_set`: while key/value units take closed-form steps, a set grows within its step
    kind (a closed-form direction has its own scale, a gradient's has none, so one shared step size cannot serve
    both); in gradient rounds any unit may."""
    return not closed_phase or is_key_value(unit) == all(is_key_value(u) for u in edit_set)


def initial_sets(units: list[EditUnit], scores: list[UnitScore], config: RazorConfig) -> list[list[EditUnit]]:
    """One candidate initial set per tower. Gradient/weight ratios are not comparable across towers (SLUG ranks each
    tower on its own too), so each tower's best units are chosen against that tower's best score, and round 0 keeps
    the candidate whose step forgets most within the retain tolerance. With closed-form key/value steps, a tower
    that has key/value units (a denoiser with cross-attention) proposes every one of them that carries the concept
    (φ > 0), best first: the map is solved per layer at once, whatever the number of units, and every prompt reaches
    the denoiser through all of them (a few heads at a time crawl: on MiniCanvas the heads with φ ≥ ½·max φ moved
    neon's forget progress by 0.05)."""
    by_name = {u.name: u for u in units}
    sets = []
    for name in dict.fromkeys(tower(u) for u in units):
        own = [s for s in scores if tower(by_name[s.unit]) == name]
        key_values = [s for s in own if is_key_value(by_name[s.unit]) and s.score > 0]
        if closed_form_steps(config) and key_values:
            sets.append([by_name[s.unit] for s in sorted(key_values, key=lambda s: s.score, reverse=True)])
            continue
        if config.method == "slug":
            layers = [s for s in own if by_name[s.unit].kind not in ("head", "kv_head")]
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
                       moments: dict[str, torch.Tensor] | None = None, closed_phase: bool = False):
    """The retain-aware shaping of the directions of `units` at `params`, from `moments` recorded there or, without
    them, from a retain pass of its own (None without shaping). In a closed-form round, key/value units take their
    direction as it is."""
    if closed_phase:
        units = [u for u in units if not is_key_value(u)]
    if not _preconditions(objective, config) or not units:
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
    config = replace(scoring.config, max_initial_units=max_initial_units)
    keep = {p for u in round_zero_units(units, scoring.scores, config) for p in u.params}
    grads = scoring.gradients

    def kept(params: Params) -> Params:
        return {k: v for k, v in params.items() if k in keep}
    return replace(scoring, gradients=replace(grads, forget=kept(grads.forget), retain=kept(grads.retain),
                                              retain_sketch=[kept(p) for p in grads.retain_sketch]))


# Scoring holds float32 forget and retain gradients of the candidates; beyond this share of the model's weight bytes
# (at least the floor, so small models score in one pass) it scores them in groups that fit, one pass each.
GRADIENT_BUDGET_SHARE, GRADIENT_BUDGET_FLOOR_GB = 0.25, 0.5


def budget_for_weights(weight_bytes: int) -> float:
    """The gradient budget (`RazorConfig.gradient_budget_gb`) the nodes give a model of `weight_bytes`: memory
    bounded by a share of the model."""
    return max(GRADIENT_BUDGET_SHARE * weight_bytes / 2 ** 30, GRADIENT_BUDGET_FLOOR_GB)


def gradient_groups(units: list[EditUnit], params: Params, budget_gb: float | None) -> list[list[EditUnit]]:
    """`units` in consecutive groups whose parameters' float32 forget and retain gradients (and the float32 gradient
    leaves of float8 weights) fit `budget_gb` (a unit larger than the budget is a group of its own; units sharing a
    parameter, a module's heads, stay together unless the module alone exceeds the budget)."""
    if budget_gb is None:
        return [units]
    groups: list[list[EditUnit]] = [[]]
    group_params: set[str] = set()
    for unit in units:
        new = [p for p in dict.fromkeys(unit.params) if p not in group_params]
        size = sum((12 if is_float8(params[p]) else 8) * params[p].numel() for p in group_params.union(new))
        if groups[-1] and new and size > budget_gb * 2 ** 30:
            groups.append([])
            group_params = set()
        groups[-1].append(unit)
        group_params.update(unit.params)
    return groups


def scored_gradients(objective: Objective, params: Params, units: list[EditUnit], config: RazorConfig,
                     keep: Callable[[list[UnitScore]], list[EditUnit]]) -> tuple[Gradients, list[UnitScore]]:
    """Every unit's score at `params`, and gradients for (at least) the units `keep` picks from those scores. Within
    `config.gradient_budget_gb`, one pass for every candidate (all gradients kept); beyond it one pass per group of
    units that fits (`gradient_groups`), each group's gradients dropped once scored, then one more pass for the kept
    units: memory bounded by the budget and by what is edited, at the cost of more passes."""
    sketch = config.retain_sketch if config.method == "razor" else 0
    groups = gradient_groups(units, params, config.gradient_budget_gb)
    if len(groups) == 1:
        grads = compute_gradients(objective, params, sketch_size=sketch)
        _require_finite_gradients(grads)
        return grads, score_units(units, params, grads.forget, grads.retain, config.alpha)
    scores: list[UnitScore] = []
    backward = 0
    for group in groups:
        grads = compute_gradients(objective, params, keys=dict.fromkeys(p for u in group for p in u.params))
        _require_finite_gradients(grads)
        scores += score_units(group, params, grads.forget, grads.retain, config.alpha)
        backward += grads.backward_passes
        grads = None  # before the next group's pass: the budget holds one group at a time
    kept = dict.fromkeys(p for u in keep(scores) for p in u.params)
    grads = compute_gradients(objective, params, sketch_size=sketch, keys=kept)
    return replace(grads, backward_passes=grads.backward_passes + backward), scores


def _require_finite_gradients(grads: Gradients) -> None:
    require_finite({**{f"forget {k}": v for k, v in grads.forget.items()},
                    **{f"retain {k}": v for k, v in grads.retain.items()}}, "the gradients",
                   "the losses overflow on this model; check its weights, or use float32 weights")


def round_zero_units(units: list[EditUnit], scores: list[UnitScore], config: RazorConfig) -> list[EditUnit]:
    """The units round 0 can start from with either method and any first-round budget up to the config's."""
    starts = [replace(config, method=m) for m in ("razor", "slug")]
    return list({u.name: u for c in starts for s in initial_sets(units, scores, c) for u in s}.values())


def score(objective: Objective, config: RazorConfig = RazorConfig()) -> Scoring:
    """Gradients once at θ⁰ and φ for every candidate unit (what ScoreHeads shows; `run` starts from it). Scored in
    groups (beyond the gradient budget), it keeps the gradients of the units round 0 can start from."""
    units = objective.units()
    if not units:
        raise ValueError("no candidate units: the chosen blocks/granularity select nothing in this model")
    theta0 = objective.base_params()
    with torch.no_grad():
        before = objective.validate(theta0)
    grads, scores = scored_gradients(objective, theta0, units, config,
                                     lambda found: round_zero_units(units, found, config))
    return Scoring(grads, scores, before, config)


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
    candidates = initial_sets(units, scoring.scores, config)
    key_value_map = objective.key_value_map() if closed_form_steps(config) and any(
        is_key_value(u) for u in units) else None
    attack_rounds = config.attack_rounds if key_value_map is not None else 0
    total = rounds_budget + attack_rounds
    # Closed-form rounds come first; once the map is spent (a round that moves forget progress by less than STALL),
    # gradient rounds step the whole set and may add any unit: the map can only make the concept draw like the
    # anchor, while the forget objective's target lies past it.
    closed_phase = key_value_map is not None
    switched = False
    by_name = {u.name: u for u in units}
    if any(p not in scoring.gradients.forget for s in candidates for u in s for p in u.params):
        scoring = score(objective, config)  # kept (`for_round_zero`) for other settings than these
    grads, scores, before = scoring.gradients, scoring.scores, scoring.before
    backward = grads.backward_passes
    delta: Params = {}
    records: list[RoundRecord] = []
    added: list[str] = []
    reached = before
    moments = None
    for r in range(rounds_budget):
        start = time.time()
        report(r, total, f"round {r + 1}: stepping {len(candidates[0])} unit(s)")
        current = add(theta0, delta)
        # Growth rounds start their search at half the previous step (steps mostly shrink as the set grows, about
        # halving per round on MiniCanvas; the search goes down as well as up) and must beat what it reached.
        search_from = records[-1].scale / 2.0 if records and records[-1].scale > 0 and not switched else START_SCALE
        # One retain pass for every candidate's layers (round 0: one per tower); growth rounds recorded theirs
        # during the mismatch gradient's pass.
        shape = preconditioner_for(objective, [u for c in candidates for u in c], current, config, moments,
                                   closed_phase)
        closed = None if not closed_phase else (
            lambda u, at=current: key_value_map.direction(u, at) if is_key_value(u) else None)
        tried = []
        for edit_set in candidates:
            dirs = directions(edit_set, grads, weights, shape, closed)
            # A closed-form set's search starts at η = 1, the map itself (its scale is the direction's own).
            start_at = (natural_scale(edit_set, dirs, current) if closed and all(
                is_key_value(u) for u in edit_set) else 0.0) or search_from
            search = StepSearch(objective, current, edit_set, dirs, config.drift_tolerance, reached)
            tried.append((edit_set, dirs, search.bracket(start=start_at)))
        # Only the proposal that forgets most on the bracket's grid is refined: bisection, then per-unit steps
        # (in round 0 its best `refine_limit` units, later only the units just added).
        edit_set, dirs, search = max(tried, key=lambda t: (t[2].forget_progress, -len(t[0])))
        found = refine_units(objective, current, edit_set, dirs, config.drift_tolerance, search.bisect().result(),
                             added or [u.name for u in edit_set][:config.refine_limit])
        reached = found.validation  # what the next round's step must improve on
        accumulate(delta, step_delta(edit_set, dirs, current, found.etas))
        records.append(RoundRecord(r, [u.name for u in edit_set], added, "closed_form" if closed else "gradient",
                                   found.scale, found.etas,
                                   found.validation.forget_progress, found.validation.retain_drift,
                                   found.probes + sum(t[2].probe.count for t in tried if t[1] is not dirs),
                                   time.time() - start))
        if found.validation.forget_progress >= config.forget_target or r + 1 == rounds_budget:
            break
        switched = False
        if r > 0 and found.validation.forget_progress - records[-2].forget_progress < STALL:
            if not closed_phase or not config.gradient_after_map:
                break  # the last units added could not move forgetting any further within the retain tolerance
            closed_phase, switched = False, True
        # Grow: re-score on the edited model and add the best units not yet edited; the next round's step uses
        # these same gradients, with the mismatch gradient of the units it moves by gradient.
        scoring = grads = None  # drop the last gradients (round 0's too) before computing the next: peak memory
        edited = add(theta0, delta)
        in_set = {u.name for u in edit_set}

        def growth_choice(rescored: list[UnitScore], closed: bool = closed_phase) -> tuple[bool, list[UnitScore]]:
            """Whether the next round stays closed-form, and the best units the edit set may add."""
            joinable = [s for s in rescored if s.unit not in in_set and grows_with(edit_set, by_name[s.unit], closed)]
            if not joinable and closed and config.gradient_after_map:  # every key/value unit is in
                closed = False
                joinable = [s for s in rescored if s.unit not in in_set]
            return closed, sorted(joinable, key=lambda s: s.score, reverse=True)[:config.units_per_round]

        # the next step needs the gradients of the edit set and of the units it adds
        grads, rescored = scored_gradients(objective, edited, units, config, lambda found: edit_set + [
            by_name[s.unit] for s in growth_choice(found)[1]])
        backward += grads.backward_passes
        closed, best = growth_choice(rescored)
        if closed != closed_phase:
            closed_phase, switched = False, True
        if not best:
            break
        candidates = [edit_set + [by_name[s.unit] for s in best]]
        added = [s.unit for s in best]
        moments = None
        # The mismatch gradient's pass over the retain data also records the next step's input moments (saving a
        # forward pass per round; text layers then count each prompt once per micro-batch it is in, not once: a
        # weighting by retain samples, as the denoiser's layers have).
        stepped_by_gradient = [u for u in candidates[0] if not closed_phase or not is_key_value(u)]
        if weights.lambda_mismatch and stepped_by_gradient:
            recorder = _input_recorder(objective, stepped_by_gradient, config)
            with recorder or nullcontext():
                grads.mismatch, passes = mismatch_gradients(objective, edited, stepped_by_gradient,
                                                            restart=recorder.restart if recorder else lambda: None)
            backward += passes
            if recorder is not None and not recorder.missing():
                moments = recorder.moments()
    # Attack-aware rounds attack the contexts the denoiser reads, so they need an edit of the denoiser alone.
    if attack_rounds and any(is_key_value(u) for u in edit_set) and len({tower(u) for u in edit_set}) == 1:
        records += attack_aware_rounds(objective, edit_set, theta0, delta, key_value_map, config, len(records),
                                       lambda a: report(rounds_budget + a, total, f"attack-aware round {a + 1}"))
    report(total, total, "done")
    return GrowthResult(delta, edit_set, scores, records, backward, config, before)


def attack_aware_rounds(objective: Objective, edit_set: list[EditUnit], theta0: Params, delta: Params,
                        key_value_map: KeyValueMap, config: RazorConfig, first_round: int,
                        progress: Callable[[int], None]) -> list[RoundRecord]:
    """`config.attack_rounds` rounds that harden the key/value edit (adding to `delta` in place): each attacks the
    current edit (`attack_contexts`), solves the map on every attack's contexts so far as well, and steps the
    key/value units by how far that map moves past the previous one; the step size maximises forget progress under
    this round's attack within the retain tolerance. The other units' steps stay as the growth left them."""
    units = [u for u in edit_set if is_key_value(u)]
    weights = key_value_weights(units)
    attacked, previous, records = [], key_value_map, []
    for a in range(config.attack_rounds):
        progress(a)
        start = time.time()
        current = add(theta0, delta)
        attacked.append(objective.attack_contexts(current, weights))
        solved = objective.key_value_map(attacked)
        dirs = {u.name: solved.direction(u, current, since=previous) for u in units}
        under_attack = objective.under_attack(attacked[-1])
        with torch.no_grad():
            baseline = under_attack.validate(current)
        found = search_step(under_attack, current, units, dirs, config.drift_tolerance,
                            start=natural_scale(units, dirs, current) or START_SCALE, baseline=baseline)
        accumulate(delta, step_delta(units, dirs, current, found.etas))
        with torch.no_grad():
            plain = objective.validate(add(theta0, delta))
        records.append(RoundRecord(first_round + a, [u.name for u in edit_set], [], "attack", found.scale, found.etas,
                                   plain.forget_progress, plain.retain_drift, found.probes + 1,
                                   time.time() - start, found.validation.forget_progress))
        previous = solved
    return records
