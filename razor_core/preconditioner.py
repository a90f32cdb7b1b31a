"""Retain-aware preconditioning of a unit's step (decided here; the RAZOR summaries do not say how η_u is shaped).

A linear layer's output changes on an input x by ΔW·x (+Δb), so the retain outputs it feeds move by
‖[ΔW Δb]·Σ^{1/2}‖ with Σ = E[x̃ x̃ᵀ], x̃ = [x; 1], the second moment of its inputs on retain data. Multiplying a
direction by (Σ + λI)⁻¹ on the input side (ridge-damped; λ = damping · mean eigenvalue of Σ) keeps it where retain
inputs have little energy — e.g. on the concept's own token in a text encoder or a cross-attention key/value — while
it stays an ascent direction for the forget loss (the preconditioner is positive definite). This is the closed form
that UCE/AlphaEdit-style edits use, applied to RAZOR's gradient step.

For a head, the rows of q/k/v see the whole input (full Σ) and the output-projection columns see only the head's
own features (the matching block of Σ, no bias).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .units import EditUnit, Slice


def _linear_name(param: str) -> str:
    return param.rsplit(".", 1)[0]


class LayerInputs:
    """One linear layer's retain inputs x̃ = [x; 1] as Σ = E[x̃ x̃ᵀ] needs them: their summed outer products or, while
    no more inputs than features have been seen, the inputs themselves. Wide layers read on few tokens stay small
    that way (Flux's single-stream output projection, 15 361 inputs, on a few hundred retain tokens: n·d, not d²),
    and their solve goes through the n x n side (Woodbury's identity, exact)."""

    def __init__(self) -> None:
        self.total: torch.Tensor | None = None
        self.chunks: list[torch.Tensor] = []
        self.count = 0
        self._solvers: dict[tuple, Callable[[torch.Tensor], torch.Tensor]] = {}

    def add(self, x: torch.Tensor) -> None:
        self.count += len(x)
        if self.total is not None:
            self.total = self.total + x.t() @ x
            return
        self.chunks.append(x)
        if self.count > x.shape[1]:  # more inputs than features: the d x d moment is now the smaller
            for chunk in self.chunks:
                self.total = chunk.t() @ chunk if self.total is None else self.total + chunk.t() @ chunk
            self.chunks = []

    def moment(self, start: int = 0, length: int | None = None) -> torch.Tensor:
        """Σ, or its block of features start..start+length."""
        end = None if length is None else start + length
        if self.total is not None:
            return (self.total / self.count)[start:end, start:end]
        rows = torch.cat(self.chunks)[:, start:end]
        return rows.t() @ rows / self.count

    def solver(self, start: int, length: int, damping: float) -> Callable[[torch.Tensor], torch.Tensor]:
        """d -> d (Σ' + λI)⁻¹ for Σ' = Σ's block of features start..start+length (λ = damping x its mean diagonal),
        built once per block: a layer's heads share it."""
        key = (start, length, damping)
        if key not in self._solvers:
            if self.total is not None or length <= self.count:
                inverse = _inverse(self.moment(start, length), damping)
                self._solvers[key] = lambda d: d @ inverse
            else:
                rows = torch.cat(self.chunks)[:, start:start + length] / self.count ** 0.5  # Σ' = rowsᵀ rows
                ridge = damping * float(rows.pow(2).sum()) / length
                small = torch.linalg.inv(rows @ rows.t() + ridge * torch.eye(len(rows), dtype=rows.dtype,
                                                                            device=rows.device))
                self._solvers[key] = lambda d: (d - (d @ rows.t()) @ small @ rows) / ridge
        return self._solvers[key]


class InputMoments:
    """Records the retain inputs of every linear layer `units` touch while the model runs inside `with` (forward
    hooks only; nothing else changes), so that a pass over retain data that runs anyway (the mismatch gradient's) can
    measure them too. `restart` forgets what was recorded, for a pass that starts over."""

    def __init__(self, root: nn.Module, units: list[EditUnit]):
        self.root = root
        self.names = sorted({_linear_name(s.param) for u in units for s in u.slices})
        self.inputs: dict[str, LayerInputs] = {}
        self.handles: list = []

    def _hook_for(self, name: str):
        def hook(module: nn.Module, inputs: tuple, _output) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double()
            self.inputs.setdefault(name, LayerInputs()).add(torch.cat([x, x.new_ones(len(x), 1)], dim=1))
        return hook

    def __enter__(self) -> InputMoments:
        self.handles = [self.root.get_submodule(n).register_forward_hook(self._hook_for(n)) for n in self.names]
        return self

    def __exit__(self, *_exc) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def restart(self) -> None:
        self.inputs.clear()

    def missing(self) -> list[str]:
        """Layers the recorded pass never reached."""
        return [n for n in self.names if n not in self.inputs]

    def moments(self) -> dict[str, LayerInputs]:
        if self.missing():
            raise RuntimeError(f"retain data never reached {self.missing()[:3]}: cannot measure their inputs")
        return {n: self.inputs[n] for n in self.names}


def retain_input_moments(root: nn.Module, units: list[EditUnit],
                         run_retain: Callable[[], None]) -> dict[str, LayerInputs]:
    """The inputs of every linear layer the units touch, recorded while `run_retain` runs the model on retain data."""
    with InputMoments(root, units) as recorder, torch.no_grad():
        run_retain()
    return recorder.moments()


def _inverse(moment: torch.Tensor, damping: float) -> torch.Tensor:
    eye = torch.eye(len(moment), dtype=moment.dtype, device=moment.device)
    ridge = damping * float(torch.diagonal(moment).mean())
    return torch.linalg.inv(moment + ridge * eye)


def precondition(unit: EditUnit, vector: torch.Tensor, shapes: dict[str, torch.Size],
                 moments: dict[str, LayerInputs], damping: float) -> torch.Tensor:
    """(Σ + λI)⁻¹ applied on the input side of every linear piece of `unit`'s flattened direction."""
    pieces: dict[Slice, torch.Tensor] = {}
    offset = 0
    for s in unit.slices:
        shape = list(shapes[s.param])
        if s.dim is not None:
            shape[s.dim] = s.length
        n = int(torch.Size(shape).numel())
        pieces[s] = vector[offset:offset + n].view(shape)
        offset += n
    out: dict[Slice, torch.Tensor] = {}
    weights = [s for s in unit.slices if s.param.endswith(".weight")]
    for w in weights:
        name = _linear_name(w.param)
        bias = next((s for s in unit.slices if s.param == f"{name}.bias"), None)
        features = pieces[w].shape[1]
        if w.dim == 1:  # output-projection columns of one head: their own input features, no bias
            solve = moments[name].solver(w.start, w.length, damping)
        else:  # the whole input, and the constant input 1 when the unit has the bias too
            solve = moments[name].solver(0, features + (bias is not None), damping)
        joint = pieces[w] if bias is None else torch.cat([pieces[w], pieces[bias].unsqueeze(1)], dim=1)
        stepped = solve(joint.double()).to(vector.dtype)
        out[w] = stepped[:, :features]
        if bias is not None:
            out[bias] = stepped[:, -1]
    for s in unit.slices:
        if s not in out:  # a parameter that is neither a linear weight nor its bias (none in attention/MLP units)
            out[s] = pieces[s]
    return torch.cat([out[s].reshape(-1) for s in unit.slices])
