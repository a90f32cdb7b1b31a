"""The regularised one-step update and its step-size search.

For the units of the edit set K (SPEC §3):

    d_u  = λ_f ρ g_f,u − λ_r g_r,u − λ_m g_m,u       (ascent on forget, descent on retain and on drift)
    Δθ_u = η_u d_u

with raw gradients, so units whose forget gradient is larger (farther from their target) move more. Step sizes are
found on the validation split in two short searches: first one η shared by K, expressed as a fraction s of the edit
set's weight norm (η = s·‖θ_K‖/‖d_K‖: scale-free, so the same search works for any model), doubling from s = 0.002
while the retain drift stays within tolerance and forget progress still improves (progress peaks and then falls as
the step overshoots; doubling on until the drift limit was measured to spend about a third of all probes past that
peak), then bisecting next to the step with the best forget progress; then (`refine_units`) each unit's own
η_u = m_u·η by trying m_u ∈ {2, ½} and keeping what helps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .gradients import Gradients
from .objective import Objective, Params, Validation
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
               shape: Callable[[EditUnit, torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Per-unit update direction (flattened over the unit's slices), optionally reshaped by `shape` (the
    retain-aware preconditioner). With a retain sketch, the direction is made orthogonal to the sketched
    retain-output sensitivities of that unit, so to first order retain outputs stay."""
    out = {}
    for u in units:
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
        for name, t in scatter_unit(unit, etas[unit.name] * dirs[unit.name], params).items():
            delta[name] = delta[name] + t if name in delta else t
    return delta


def add(params: Params, delta: Params) -> Params:
    return {k: v + delta[k] if k in delta else v for k, v in params.items()}


@dataclass(frozen=True)
class SearchResult:
    etas: dict[str, float]
    scale: float               # s: the shared step as a fraction of ‖θ_K‖
    validation: Validation
    probes: int


class _Prober:
    def __init__(self, objective: Objective, params: Params, units: list[EditUnit], dirs: dict[str, torch.Tensor],
                 drift_tolerance: float):
        self.objective, self.params, self.units, self.dirs = objective, params, units, dirs
        self.tolerance = drift_tolerance
        self.count = 0

    def __call__(self, etas: dict[str, float]) -> Validation:
        self.count += 1
        with torch.no_grad():
            return self.objective.validate(add(self.params, step_delta(self.units, self.dirs, self.params, etas)))

    def better(self, v: Validation, best: Validation | None) -> bool:
        return v.retain_drift <= self.tolerance and (best is None or v.forget_progress > best.forget_progress)


def search_step(objective: Objective, params: Params, units: list[EditUnit], dirs: dict[str, torch.Tensor],
                drift_tolerance: float, start: float = 0.002, max_scale: float = 1.0, bisections: int = 4,
                patience: int = 2) -> SearchResult:
    """The shared step: the largest forget progress within the retain tolerance along s·‖θ_K‖/‖d_K‖·d.
    `patience`: doubling stops after this many probes in a row that did not improve forget progress."""
    probe = _Prober(objective, params, units, dirs, drift_tolerance)
    d_norm = float(torch.cat([dirs[u.name] for u in units]).norm())
    if d_norm == 0.0:
        return SearchResult({u.name: 0.0 for u in units}, 0.0, objective.validate(params), 1)
    theta_norm = float(torch.cat([unit_values(u, params).float() for u in units]).norm())

    def etas_for(scale: float) -> dict[str, float]:
        return {u.name: scale * theta_norm / d_norm for u in units}

    best_scale, best = 0.0, None
    lo, hi, scale, stale = 0.0, max_scale, start, 0
    while scale <= max_scale:  # grow geometrically while the step stays within the retain tolerance and helps
        v = probe(etas_for(scale))
        if v.retain_drift > drift_tolerance:
            hi = scale
            break
        if probe.better(v, best):
            best_scale, best, stale = scale, v, 0
        else:
            stale += 1
            if stale == patience:  # past the peak: larger steps overshoot the forget target
                break
        scale *= 2.0
    if best is not None:  # bisect between the best allowed step and its larger neighbour
        lo, hi = best_scale, min(hi, best_scale * 2.0)
    for _ in range(bisections):
        mid = 0.5 * (lo + hi)
        v = probe(etas_for(mid))
        if probe.better(v, best):
            best_scale, best, lo = mid, v, mid
        else:
            hi = mid
    if best is None:
        return SearchResult({u.name: 0.0 for u in units}, 0.0, probe({u.name: 0.0 for u in units}), probe.count)
    return SearchResult(etas_for(best_scale), best_scale, best, probe.count)


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
                etas, best = trial, v
                break
    return SearchResult(etas, found.scale, best, found.probes + probe.count)
