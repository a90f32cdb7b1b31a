"""Ratio-aware unit scores.

    φ(u) = ‖g_f,u‖ / (‖θ_u‖ + ε) · (1 − cos(g_f,u, g_r,u))^α

Term 1 is SLUG's importance (forget-gradient norm relative to the weights); term 2 rewards units whose forget
direction is orthogonal or opposed to the retain gradient (signed cosine, so opposed units score highest).
The raw parts are kept for plots and for SLUG's Pareto choice.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .objective import Params
from .units import EditUnit, unit_values


@dataclass(frozen=True)
class UnitScore:
    unit: str
    importance: float   # ‖g_f‖ / (‖θ‖ + ε)
    cosine: float       # cos(g_f, g_r), signed
    score: float        # φ


def score_units(units: list[EditUnit], params: Params, forget_grad: Params, retain_grad: Params,
                alpha: float = 1.0, eps: float = 1e-8) -> list[UnitScore]:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    scores = []
    for unit in units:
        theta = unit_values(unit, params).float()
        g_f = unit_values(unit, forget_grad)
        g_r = unit_values(unit, retain_grad)
        importance = float(g_f.norm() / (theta.norm() + eps))
        cosine = float(torch.nn.functional.cosine_similarity(g_f, g_r, dim=0, eps=eps))
        score = importance * max(0.0, 1.0 - cosine) ** alpha
        scores.append(UnitScore(unit.name, importance, cosine, score))
    return scores


def pareto_front(scores: list[UnitScore]) -> list[UnitScore]:
    """SLUG's front: units not dominated by one with higher importance and lower |cos| (both strict)."""
    return [s for s in scores
            if not any(o.importance > s.importance and abs(o.cosine) < abs(s.cosine) for o in scores)]
