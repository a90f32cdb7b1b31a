"""The regularised one-step update and its step-size search.

For the units of the edit set K (SPEC §3):

    d_u  = λ_f ρ g_f,u − λ_r g_r,u − λ_m g_m,u       (ascent on forget, descent on retain and on drift)
    Δθ_u = η_u d_u

with raw gradients, so units whose forget gradient is larger (farther from their target) move more. Step sizes are
found on the validation split in two short searches: first one η shared by K, expressed as a fraction s of the edit
set's weight norm (η = s·‖θ_K‖/‖d_K‖: scale-free, so the same search works for any model), then (`refine_units`)
each unit's own η_u = m_u·η by trying m_u ∈ {2, ½} and keeping what helps.

The shared search starts at s = 0.016 (growth rounds: at half the previous round's step) and doubles while the
retain drift stays within tolerance and forget progress still improves. Progress peaks and then falls as the step
overshoots, so doubling stops two probes past the peak; when the peak or the tolerance lies below the start, it
halves instead. It then bisects next to the step with the best forget progress until a probe comes within 0.005 of
it (round 0 bisects only the tower proposal that forgets most on the doubling/halving grid). A step must beat the
forget progress the weights already have (a growth round's start can lie far past its peak, where doubling climbs a
slope that never gets back to it). Measured on MiniCanvas: doubling on to the drift limit spent a third of all probes
past the peak; doubling from s = 0.002 in every round spent four or five probes per search on steps far below it;
and four fixed bisections moved the step but rarely the progress (by 0.001 on most searches). A probe computes the
retain drift only when its forget progress could make it the best step (about half of them on MiniCanvas).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .gradients import Gradients
from .objective import Objective, Params, Validation, computable
from .units import EditUnit, scatter_unit, unit_values


@dataclass(frozen=True)
class StepWeights:
    lambda_forget: float = 1.0
    rho: float = 1.0          # the ratio that scales forget pressure
    lambda_retain: float = 0.1
    lambda_mismatch: float = 0.1


def _column_space(matrix: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """Orthonormal basis of the column space (rank-aware, so a sketch that misses a unit removes nothing)."""
    u, sv, _ = torch.linalg.svd(matrix, full_matrices=False)
    if sv.numel() == 0 or float(sv[0]) == 0.0:
        return matrix[:, :0]
    return u[:, sv > rtol * sv[0]]


def directions(units: list[EditUnit], grads: Gradients, weights: StepWeights,
               shape: Callable[[EditUnit, torch.Tensor], torch.Tensor] | None = None,
               closed_form: Callable[[EditUnit], torch.Tensor | None] | None = None) -> dict[str, torch.Tensor]:
    """Per-unit update direction (flattened over the unit's slices), optionally reshaped by `shape` (the
    retain-aware preconditioner). With a retain sketch, the direction is made orthogonal to the sketched
    retain-output sensitivities of that unit, so to first order retain outputs stay. Units for which `closed_form`
    gives a direction (key/value units: the way to their closed-form map) take it as it is."""
    out = {}
    for u in units:
        fixed = closed_form(u) if closed_form is not None else None
        if fixed is not None:
            out[u.name] = fixed
            continue
        d = (weights.lambda_forget * weights.rho * unit_values(u, grads.forget)
             - weights.lambda_retain * unit_values(u, grads.retain))
        if grads.mismatch:  # empty at θ⁰, where it is zero
            d = d - weights.lambda_mismatch * unit_values(u, grads.mismatch)
        if shape is not None:
            d = shape(u, d)
        if grads.retain_sketch:
            basis = _column_space(torch.stack([unit_values(u, s) for s in grads.retain_sketch], dim=1))
            d = d - basis @ (basis.t() @ d)
        out[u.name] = d
    return out


def step_delta(units: list[EditUnit], dirs: dict[str, torch.Tensor], params: Params,
               etas: dict[str, float]) -> Params:
    """Δ for every touched parameter: η_u · d_u scattered into full-shape tensors."""
    delta: Params = {}
    for unit in units:
        accumulate(delta, scatter_unit(unit, etas[unit.name] * dirs[unit.name], params))
    return delta


def accumulate(total: Params, step: Params) -> None:
    """Add `step` into `total` in place (a parameter `total` lacks starts as the step)."""
    for name, t in step.items():
        total[name] = total[name] + t if name in total else t


def add(params: Params, delta: Params) -> Params:
    return {k: computable(v) + delta[k] if k in delta else v for k, v in params.items()}


@dataclass(frozen=True)
class SearchResult:
    etas: dict[str, float]
    scale: float               # s: the shared step as a fraction of ‖θ_K‖
    validation: Validation
    probes: int


class _Probed:
    """One probe's validation, whose retain drift is computed only when a decision needs it."""

    def __init__(self, forget_progress: float, retain_drift: Callable[[], float]):
        self.forget_progress, self._drift, self._value = forget_progress, retain_drift, None

    @property
    def retain_drift(self) -> float:
        if self._value is None:
            with torch.no_grad():
                self._value = self._drift()
        return self._value

    def validation(self) -> Validation:
        return Validation(self.forget_progress, self.retain_drift)


class _Prober:
    """Validates steps along the directions. A step that does not forget more than the best one so far is ruled out
    whatever its retain drift, so the drift (the retain half of a validation) is computed only for steps that do,
    or whose progress comes close (`StepSearch.bisect`'s stop rule)."""

    def __init__(self, objective: Objective, params: Params, units: list[EditUnit], dirs: dict[str, torch.Tensor],
                 drift_tolerance: float):
        self.objective, self.params, self.units, self.dirs = objective, params, units, dirs
        self.tolerance = drift_tolerance
        self.count = 0

    def __call__(self, etas: dict[str, float]) -> _Probed:
        self.count += 1
        with torch.no_grad():
            return _Probed(*self.objective.validate_forget_first(
                add(self.params, step_delta(self.units, self.dirs, self.params, etas))))

    @staticmethod
    def beats(v: _Probed, best: Validation | None) -> bool:
        """More forget progress than `best` (the retain drift aside)."""
        return best is None or v.forget_progress > best.forget_progress

    def better(self, v: _Probed, best: Validation | None) -> bool:
        return self.beats(v, best) and v.retain_drift <= self.tolerance


START_SCALE = 0.016   # first probe of a search without a previous step: mid-range, so it goes up or down
MIN_SCALE = 0.001     # the smallest step the search halves down to (then it bisects towards zero)
SETTLED = 0.005       # a bisection probe this close to the best forget progress ends the search (half of STALL)


class StepSearch:
    """The shared step along s·‖θ_K‖/‖d_K‖·d, in two phases: `bracket` (doubling from the start, or halving below
    it) finds the best step on a coarse grid, `bisect` refines next to it. Round 0 brackets every tower's proposal
    and bisects only the one that forgets most: bisection moves forget progress by a few thousandths."""

    def __init__(self, objective: Objective, params: Params, units: list[EditUnit], dirs: dict[str, torch.Tensor],
                 drift_tolerance: float, baseline: Validation | None = None):
        self.probe = _Prober(objective, params, units, dirs, drift_tolerance)
        self.units, self.baseline = units, baseline
        self.d_norm = float(torch.cat([dirs[u.name] for u in units]).norm())
        self.theta_norm = float(torch.cat([unit_values(u, params).float() for u in units]).norm())
        self.best_scale, self.hi = 0.0, 0.0  # hi: the smallest step known to be too large
        self.best: Validation | None = None

    def _etas(self, scale: float) -> dict[str, float]:
        return {u.name: scale * self.theta_norm / self.d_norm for u in self.units}

    def _probe(self, scale: float) -> _Probed:
        return self.probe(self._etas(scale))

    @property
    def _reference(self) -> Validation | None:
        """What a probe must beat: the best step so far, else the weights the search starts from."""
        return self.best or self.baseline

    @property
    def forget_progress(self) -> float:
        """The best forget progress found so far (−inf when no step beat the baseline)."""
        return self.best.forget_progress if self.best is not None else float("-inf")

    def bracket(self, start: float = START_SCALE, max_scale: float = 1.0, min_scale: float = MIN_SCALE,
                patience: int = 2) -> StepSearch:
        """`patience`: doubling stops after this many probes in a row that did not improve forget progress."""
        if self.d_norm == 0.0:
            return self
        self.hi, scale, stale = max_scale, start, 0
        while scale <= max_scale:  # grow geometrically while the step stays within the retain tolerance and helps
            v = self._probe(scale)
            if self.probe.better(v, self._reference):
                self.best_scale, self.best, stale = scale, v.validation(), 0
            elif self.probe.beats(v, self._reference):  # it would help, but past the retain tolerance
                self.hi = scale
                break
            else:
                stale += 1
                if stale == patience:  # past the peak: larger steps overshoot the forget target
                    break
            scale *= 2.0
        if self.best is None or self.best_scale == start:  # the peak, or the tolerance, lies below the start: halve
            scale = start / 2.0
            while scale >= min_scale:
                v = self._probe(scale)
                if self.probe.better(v, self._reference):
                    self.best_scale, self.best = scale, v.validation()
                elif self.best is not None:
                    break
                else:
                    self.hi = scale  # still too far: past the drift tolerance, or overshooting
                scale /= 2.0
        return self

    def bisect(self, bisections: int = 4, settled: float = SETTLED) -> StepSearch:
        """`settled`: bisection stops at a probe within this forget progress of the best (the peak is flat there)."""
        if self.d_norm == 0.0:
            return self
        lo, hi = 0.0, self.hi
        if self.best is not None:  # bisect between the best allowed step and its larger neighbour
            lo, hi = self.best_scale, min(hi, self.best_scale * 2.0)
        for _ in range(bisections):
            mid = 0.5 * (lo + hi)
            v = self._probe(mid)
            flat = self.best is not None and abs(v.forget_progress - self.best.forget_progress) < settled and (
                v.retain_drift <= self.probe.tolerance)
            if self.probe.better(v, self._reference):
                self.best_scale, self.best, lo = mid, v.validation(), mid
            else:
                hi = mid
            if flat:
                break
        return self

    def result(self) -> SearchResult:
        if self.best is None:  # no step beats the weights it starts from: stay
            stay = {u.name: 0.0 for u in self.units}
            return SearchResult(stay, 0.0, self.baseline or self.probe(stay).validation(), self.probe.count)
        return SearchResult(self._etas(self.best_scale), self.best_scale, self.best, self.probe.count)


def search_step(objective: Objective, params: Params, units: list[EditUnit], dirs: dict[str, torch.Tensor],
                drift_tolerance: float, start: float = START_SCALE, max_scale: float = 1.0,
                min_scale: float = MIN_SCALE, bisections: int = 4, patience: int = 2,
                settled: float = SETTLED, baseline: Validation | None = None) -> SearchResult:
    """The shared step: the largest forget progress within the retain tolerance along s·‖θ_K‖/‖d_K‖·d (see
    `StepSearch`). `baseline`: the validation of `params` themselves, which a step must beat (a start far past the
    peak can land below it while doubling still looks like progress)."""
    search = StepSearch(objective, params, units, dirs, drift_tolerance, baseline)
    return search.bracket(start, max_scale, min_scale, patience).bisect(bisections, settled).result()


def refine_units(objective: Objective, params: Params, units: list[EditUnit], dirs: dict[str, torch.Tensor],
                 drift_tolerance: float, found: SearchResult, refine: list[str]) -> SearchResult:
    """Each unit in `refine` tries its own η_u at twice and half the shared step, keeping what improves forget
    progress within the tolerance (growth rounds pass only the unit just added: the others were refined when they
    joined)."""
    if found.scale == 0.0 or len(units) < 2:
        return found
    probe = _Prober(objective, params, units, dirs, drift_tolerance)
    etas, best = found.etas, found.validation
    for unit in (u for u in units if u.name in refine):
        for factor in (2.0, 0.5):
            trial = {**etas, unit.name: etas[unit.name] * factor}
            v = probe(trial)
            if probe.better(v, best):
                etas, best = trial, v.validation()
                break
    return SearchResult(etas, found.scale, best, found.probes + probe.count)
