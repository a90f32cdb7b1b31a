"""Previews as RGB arrays (H, W, 3, uint8): the unit-score heat-map and the growth curve (matplotlib, no display)."""
from __future__ import annotations

import re
from typing import Iterable

import matplotlib

matplotlib.use("Agg")  # render off-screen: nodes and servers have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .scoring import UnitScore  # noqa: E402

_HEAD = re.compile(r"^(.*?)(\.head|\.kv)(\d+)$")  # a head, or a cross-attention head's keys/values


def _cell(unit: str) -> tuple[str, int]:
    """(row, column) of a unit: heads by module (key/value heads in a row of their own, `….attn2.kv`), whole-layer
    units in column 0."""
    match = _HEAD.match(unit)
    if not match:
        return unit, 0
    return match.group(1) + (".kv" if match.group(2) == ".kv" else ""), int(match.group(3))


def _render(fig) -> np.ndarray:
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def score_grid(scores: Iterable[UnitScore]) -> tuple[list[str], int, np.ndarray]:
    """Rows (attention modules and whole-layer units, in model order), the number of head columns, and φ per cell
    (NaN where a row has no such head). A whole-layer unit fills column 0."""
    rows: dict[str, dict[int, float]] = {}
    for s in scores:
        row, col = _cell(s.unit)
        rows.setdefault(row, {})[col] = s.score
    width = max(max(cols) for cols in rows.values()) + 1
    grid = np.full((len(rows), width), np.nan)
    for i, cols in enumerate(rows.values()):
        for j, value in cols.items():
            grid[i, j] = value
    return list(rows), width, grid


def score_heatmap(scores: list[UnitScore], selected: Iterable[str] = (), title: str = "") -> np.ndarray:
    """log₁₀ φ per unit, rows = modules, columns = heads; the units in `selected` are outlined."""
    names, width, grid = score_grid(scores)
    selected = set(selected)
    positive = grid[np.isfinite(grid) & (grid > 0)]
    floor = positive.min() if positive.size else 1.0
    shown = np.log10(np.where(np.isfinite(grid), np.maximum(grid, floor), np.nan))
    fig, ax = plt.subplots(figsize=(2.2 + 0.45 * width, 1.2 + 0.16 * len(names)), dpi=100)
    im = ax.imshow(shown, aspect="auto", cmap="magma", interpolation="nearest")
    ax.set_yticks(range(len(names)), [n[-38:] for n in names], fontsize=6)
    ax.set_xticks(range(width), [f"h{j}" for j in range(width)] if width > 1 else ["layer"], fontsize=7)
    for s in scores:
        if s.unit in selected:
            row, col = _cell(s.unit)
            ax.add_patch(plt.Rectangle((col - 0.5, names.index(row) - 0.5), 1, 1, fill=False, ec="cyan", lw=1.5))
    fig.colorbar(im, ax=ax, label="log10 score φ")
    ax.set_title(title or "RAZOR unit scores", fontsize=9)
    fig.tight_layout()
    return _render(fig)


def growth_curve(forget: list[float], drift: list[float], forget_target: float, drift_tolerance: float,
                 title: str = "") -> np.ndarray:
    """Forget progress and retain drift after each round, with the target and the tolerance."""
    rounds = np.arange(1, len(forget) + 1)
    fig, ax = plt.subplots(figsize=(4.8, 3.2), dpi=100)
    ax.plot(rounds, forget, "o-", color="tab:red", label="forget progress")
    ax.plot(rounds, drift, "s-", color="tab:blue", label="retain drift")
    ax.axhline(forget_target, color="tab:red", ls=":", lw=1, label="forget target")
    ax.axhline(drift_tolerance, color="tab:blue", ls=":", lw=1, label="drift tolerance")
    ax.set_xlabel("round")
    ax.set_xticks(rounds)
    ax.set_ylim(0, max(1.05, max(forget + drift) * 1.05))
    ax.legend(fontsize=7, loc="center right")
    ax.set_title(title or "RAZOR growth", fontsize=9)
    fig.tight_layout()
    return _render(fig)
