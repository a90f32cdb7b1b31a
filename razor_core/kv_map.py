"""The closed-form key/value map: RAZOR's step for the denoiser's cross-attention keys and values.

Every prompt reaches a UNet/DiT denoiser through its cross-attention key and value projections W (`attn2.to_k`,
`attn2.to_v`), soft prompts and other text encoders included. For such a projection the local quadratic model of the
forget objective has a closed-form minimiser (the map UCE and TIME solve): the concept's text vectors c_e should
produce what the anchor's aligned vectors c*_e produced, while retain vectors c_p keep their outputs,

    W' = argmin Σ_e ‖W'c_e − W⁰c*_e‖² + λ Σ_p ‖W'c_p − W⁰c_p‖² + γ ‖W' − W⁰‖²_F
       = (Σ_e W⁰c*_e c_eᵀ + λ Σ_p W⁰c_p c_pᵀ + γW⁰) (Σ_e c_e c_eᵀ + λ Σ_p c_p c_pᵀ + γI)⁻¹.

The problem separates by output row, so a head's rows of W' are the head's own minimiser: a unit's direction is its
rows of W' − W (at the current weights W), and RAZOR's step-size search scales it (η = 1 reaches W').

Which text vectors (the choice of UCE's 2023 reference code, for prompts that name the concept mid-caption):
- c_e: the forget prompt's context from the concept's first token to the end (end token and padding): a causal
  text encoder (CLIP) carries the concept in exactly these positions, and the denoiser attends to all of them.
- c*_e: the anchor prompt's vectors, aligned from the end: the concept's words up to the end token map to the
  anchor's end token (its causal summary), the k-th padding position to the anchor's k-th (clamped to the context).
- c_p: every position of every retain prompt, the empty prompt included (classifier-free guidance uses it).
Biases stay: they are shared by every token, retain ones included, so they cannot single out the concept.

An attacker who sets the context (a soft prompt, another text encoder) can look for the c' that makes the edited
projections give what the original ones gave for the concept (`reproducing_rows`): W' stays close to invertible, so
such contexts exist. Attack-aware rounds (growth.py) add them to the rows the map is solved on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .units import EditUnit, unit_values

RETAIN_SCALE = 1.0     # λ: weight of the retain vectors (UCE's preserve_scale)
REGULARIZATION = 0.5   # γ: ridge towards the original weights (UCE's lamb)

# text -> (the token id at each position of its context, whether that position holds a word of the text rather
# than a start, end or padding token): what an adapter's tokenizer gives, and all the alignment needs.
Tokens = Callable[[str], "tuple[list[int], list[bool]]"]


def tokenizer_positions(tokenizer, prompt: str, length: int) -> tuple[list[int], list[bool]]:
    """`Tokens` for a Hugging Face tokenizer whose contexts are padded to `length` positions: every special token
    (start, end, padding) is no word."""
    ids = tokenizer(prompt, padding="max_length", max_length=length, truncation=True).input_ids
    special = set(tokenizer.all_special_ids)
    return ids, [i not in special for i in ids]


def closed_form(weight: torch.Tensor, concept: torch.Tensor, guide: torch.Tensor, retain: torch.Tensor,
                retain_scale: float = RETAIN_SCALE, regularization: float = REGULARIZATION) -> torch.Tensor:
    """W' for one projection `weight` (out, in), with vectors as rows: concept c_e and guide c*_e (n_e, in), aligned
    row by row, and retain c_p (n_p, in). Solved in float64: the normal matrix sums thousands of outer products."""
    w = weight.to(torch.float64)
    c, g, p = (m.to(torch.float64) for m in (concept, guide, retain))
    ridge = regularization * torch.eye(w.shape[1], dtype=torch.float64, device=w.device)
    retain_gram = retain_scale * p.T @ p
    normal = c.T @ c + retain_gram + ridge              # Σ c_e c_eᵀ + λ Σ c_p c_pᵀ + γI (symmetric)
    moments = w @ (g.T @ c + retain_gram + ridge)       # Σ W c*_e c_eᵀ + λ Σ W c_p c_pᵀ + γW
    return torch.linalg.solve(normal, moments.T).T.to(weight.dtype)


def guide_positions(start: int, prompt_end: int, anchor_end: int, length: int) -> list[int]:
    """The anchor position that guides each forget-prompt position start..length-1: up to the end token, the
    anchor's end token; padding aligned from the end tokens, clamped to the context."""
    return [min(anchor_end + max(0, j - prompt_end), length - 1) for j in range(start, length)]


@dataclass(frozen=True)
class TextVectors:
    """The rows the map is solved on (see the module doc)."""
    concept: torch.Tensor   # (n_e, d)
    guide: torch.Tensor     # (n_e, d)
    retain: torch.Tensor    # (n_p, d)


def end_position(words: list[bool]) -> int:
    """The end token's position: the first position after the words that holds none (the last one if all do)."""
    first = next((j for j, w in enumerate(words) if w), 0)
    return next((j for j in range(first + 1, len(words)) if not words[j]), len(words) - 1)


def concept_start(ids: list[int], words: list[bool], concept_ids: list[int]) -> int | None:
    """The position of the concept's first token among the prompt's words; None when the prompt does not name it."""
    n = len(concept_ids)
    for start in range(len(ids) - n + 1):
        if ids[start:start + n] == concept_ids and all(words[start:start + n]):
            return start
    return None


def _aligned_tokens(tokens: Tokens, prompt: str, length: int) -> tuple[list[int], list[bool]]:
    ids, words = tokens(prompt)
    if len(ids) != length:
        raise ValueError(f"the tokenizer gives {len(ids)} positions for {prompt!r} but the context has {length}: "
                         "this model's conditioning is not one token sequence, so the key/value map cannot "
                         "align it; choose kv_step='gradient'")
    return ids, words


def concept_positions(prompts: list[str], concept: str, tokens: Tokens, length: int) -> list[int | None]:
    """Per prompt, the context position of the concept's first token (None where the prompt does not name it)."""
    concept_ids = [t for t, w in zip(*tokens(concept)) if w]
    return [concept_start(*_aligned_tokens(tokens, p, length), concept_ids) if concept_ids else None
            for p in prompts]


def text_vectors(forget: torch.Tensor, anchor: torch.Tensor, retain: torch.Tensor, forget_prompts: list[str],
                 anchor_prompts: list[str], concept: str, tokens: Tokens) -> TextVectors:
    """From the frozen text encoder's contexts (prompts, positions, d) of the forget, anchor and retain prompts."""
    length = forget.shape[1]
    starts = concept_positions(forget_prompts, concept, tokens, length)
    anchor_ends = [end_position(_aligned_tokens(tokens, p, length)[1]) for p in anchor_prompts]
    concept_rows, guide_rows = [], []
    for i, (prompt, start) in enumerate(zip(forget_prompts, starts)):
        if start is None:
            continue  # a forget prompt that does not name the concept has no concept positions to map
        concept_rows.append(forget[i, start:])
        guide_rows.append(anchor[i, guide_positions(start, end_position(tokens(prompt)[1]), anchor_ends[i], length)])
    if not concept_rows:
        raise ValueError(f"no forget prompt names the concept {concept!r} in words the tokenizer keeps: the key/value "
                         "map edits the concept's token positions, so write the concept into the forget prompts "
                         "({concept} stands for it)")
    return TextVectors(torch.cat(concept_rows), torch.cat(guide_rows), retain.reshape(-1, retain.shape[-1]))


@dataclass
class KeyValueMap:
    """W' of every projection a key/value unit touches, solved once from θ⁰ (row-separable, so every unit of a layer
    shares it), and each unit's direction towards it."""
    vectors: TextVectors
    theta0: dict[str, torch.Tensor]
    retain_scale: float = RETAIN_SCALE
    regularization: float = REGULARIZATION
    _solved: dict[str, torch.Tensor] = field(default_factory=dict)

    def target(self, param: str) -> torch.Tensor:
        if param not in self._solved:
            w = self.theta0[param]
            v = self.vectors
            self._solved[param] = closed_form(w.float(), v.concept.to(w.device), v.guide.to(w.device),
                                              v.retain.to(w.device), self.retain_scale, self.regularization)
        return self._solved[param]

    def with_rows(self, extra: TextVectors) -> "KeyValueMap":
        """The map solved on these rows and `extra`'s concept/guide rows (the retain rows stay these)."""
        v = self.vectors
        return KeyValueMap(TextVectors(torch.cat([v.concept, extra.concept.to(v.concept)]),
                                       torch.cat([v.guide, extra.guide.to(v.guide)]), v.retain),
                           self.theta0, self.retain_scale, self.regularization)

    def direction(self, unit: EditUnit, params: dict[str, torch.Tensor],
                  since: "KeyValueMap | None" = None) -> torch.Tensor:
        """The unit's rows of W' − W at `params` (zero on its biases), flattened as `unit_values` flattens; with
        `since`, the rows of W' − W'_since instead: how far this map moves past an earlier one, whatever other steps
        did to the weights meanwhile."""
        pieces = []
        for s in unit.slices:
            current = s.of(params[s.param]).float()
            if not s.param.endswith(".weight"):
                pieces.append(torch.zeros(current.numel(), dtype=torch.float32, device=current.device))
                continue
            start = current if since is None else s.of(since.target(s.param))
            pieces.append((s.of(self.target(s.param)) - start).reshape(-1))
        return torch.cat(pieces)


def reproducing_rows(rows: torch.Tensor, current: list[torch.Tensor], original: list[torch.Tensor],
                     ridge: float = 0.01) -> torch.Tensor:
    """What an attacker who controls the context would feed the edited projections `current` (each (out, in)) to get
    back what the `original` ones made of `rows` (n, in): c' = argmin Σ_W ‖W c' − W⁰ c‖² + λ‖c'‖², over every
    projection at once (one context reaches every cross-attention layer), λ = `ridge` × the mean eigenvalue of
    Σ WᵀW. The closed-form adversary of a key/value edit (RECE's attack): the ridge keeps c' near the scale of real
    contexts."""
    gram = sum(w.double().T @ w.double() for w in current)
    cross = sum(w.double().T @ w0.double() for w, w0 in zip(current, original))
    lam = ridge * float(gram.diagonal().mean())
    solve = torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype, device=gram.device), cross)
    return (rows.double() @ solve.T).to(rows.dtype)


def is_key_value(unit: EditUnit) -> bool:
    return unit.kind in ("kv", "kv_head")


def key_value_weights(units: list[EditUnit]) -> list[str]:
    """The key/value projection weights that `units`' key/value units touch (what the adversary attacks)."""
    return sorted({s.param for u in units if is_key_value(u) for s in u.slices if s.param.endswith(".weight")})


def natural_scale(units: list[EditUnit], dirs: dict[str, torch.Tensor], params: dict[str, torch.Tensor]) -> float:
    """The step search's scale s (η = s·‖θ_K‖/‖d_K‖) at which η = 1, i.e. the closed-form solution itself (0 for
    all-zero weights, where no scale means that)."""
    d = float(torch.cat([dirs[u.name] for u in units]).norm())
    theta = float(torch.cat([unit_values(u, params).float() for u in units]).norm())
    return d / theta if theta > 0 else 0.0
