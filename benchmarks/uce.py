"""UCE baseline: Unified Concept Editing (Gandikota, Orgad, Belinkov, Materzyńska, Bau, WACV 2024; arXiv 2308.14761).

UCE edits every cross-attention key and value projection W (here `to_k`, `to_v` of each MiniDiT `attn2`) in closed
form, so that the concept's text vectors c_e produce what the guide (anchor) vectors c*_e produced before, while the
retain vectors c_p keep their outputs:

    W' = argmin Σ_e ‖W'c_e − W c*_e‖² + λ Σ_p ‖W'c_p − W c_p‖² + γ ‖W' − W‖²_F
       = (Σ_e W c*_e c_eᵀ + λ Σ_p W c_p c_pᵀ + γ W) (Σ_e c_e c_eᵀ + λ Σ_p c_p c_pᵀ + γ I)⁻¹.

There is no training. The cost is one text-encoder pass and one 128×128 solve per projection (12 on MiniDiT).

Choices where the paper is silent, or where it had to be adapted to MiniCanvas:
- **Biases stay unchanged.** SD's `to_k`/`to_v` have no bias, but MiniDiT's do. With the bias b kept, the
  objective on full outputs, (W'c + b) − (W c* + b), reduces exactly to the weight-only objective above. The bias
  is shared by every token, retain tokens included, so it cannot single out the concept anyway. The edit is
  therefore weight deltas only.
- **Which token vectors.** The paper's code (`train-scripts/train_erase.py`, 2023) erases a prompt's text-encoder
  outputs from its last word token to the end of the context (EOS and all the padding). It aligns these from the
  end with the guide prompt's outputs, and pins *every* position of every preserve prompt. The 2024 diffusers
  rewrite (`trainscripts/uce_sd_erase.py`) keeps only the last word token. Both assume the prompt *is* the concept
  ("Van Gogh"). MiniCanvas forget prompts are captions with the concept in the middle ("a neon style image of a
  star"), so here:
  - c_e = the outputs at every position from the concept's first token to the end of the context. The text
    encoder is causal, so exactly these positions carry the concept. MiniDiT attends to all 24 positions,
    padding included, as SD does, so the padding must be edited too.
  - c*_e = the aligned anchor prompt's outputs, aligned as in the 2023 code: the EOS goes to the anchor's EOS,
    and the k-th padding position goes to the anchor's k-th padding position (clamped to the last position when
    the anchor is the longer prompt). The concept word and the words after it, up to EOS, go to the anchor's
    EOS. The anchor has no word in their place, and its EOS is the causal summary of the whole anchor prompt
    (the object, for a style's anchors).
  - c_p = every position of every retain prompt, mapped to itself, as in the 2023 code. This includes the
    empty prompt, which classifier-free guidance uses.
- **Scales.** Erase scale 1, λ = 1 and γ = 0.5 are the defaults of the 2024 reference code (`preserve_scale`,
  `lamb`). The 2023 code used λ = 0.1 with γ = 0.5 against ~1,700 artist preserve prompts. MiniCanvas's layer-normed
  128-wide token vectors have ‖c‖² ≈ 121, against ≈ 768 for CLIP-L, so γ is about 6× stronger relative to one
  token than on SD. It still weighs under 0.5% of one token's energy, so it stays a ridge and does not act as a
  constraint.
"""
from __future__ import annotations

import torch

from razor_core.forget_set import ForgetSet
from razor_core.minicanvas import text
from razor_core.minicanvas.pipeline import MiniCanvasPipeline

RETAIN_SCALE = 1.0  # λ: UCE's preserve_scale
REGULARIZATION = 0.5  # γ: UCE's lamb, the ridge toward the original weight
EDITED_PROJECTIONS = ("to_k", "to_v")


def uce_closed_form(weight: torch.Tensor, concept_inputs: torch.Tensor, guide_inputs: torch.Tensor,
                    retain_inputs: torch.Tensor, retain_scale: float = RETAIN_SCALE,
                    regularization: float = REGULARIZATION) -> torch.Tensor:
    """The UCE minimiser W' for one projection `weight` (out, in), with vectors as rows: concept c_e and guide c*_e
    (n_e, in), aligned row by row, and retain c_p (n_p, in). The solve runs in float64 because the normal matrix
    sums hundreds of outer products."""
    w = weight.to(torch.float64)
    c, g, p = (m.to(torch.float64) for m in (concept_inputs, guide_inputs, retain_inputs))
    ridge = regularization * torch.eye(w.shape[1], dtype=torch.float64)
    retain_gram = retain_scale * p.T @ p
    normal = c.T @ c + retain_gram + ridge              # Σ c_e c_eᵀ + λ Σ c_p c_pᵀ + γI (symmetric)
    moments = w @ (g.T @ c + retain_gram + ridge)       # Σ W c*_e c_eᵀ + λ Σ W c_p c_pᵀ + γW
    return torch.linalg.solve(normal, moments.T).T.to(weight.dtype)  # moments · normal⁻¹


def _prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids from BOS to EOS, without padding, truncated as `text.tokenize` truncates."""
    return tokenizer(prompt, truncation=True, max_length=text.CONTEXT_LENGTH).input_ids


def concept_start(tokenizer, prompt: str, concept: str) -> int:
    """Position of the concept's first token in the prompt's context. UCE edits from there on."""
    ids, word = _prompt_ids(tokenizer, prompt), tokenizer(concept, add_special_tokens=False).input_ids
    for start in range(1, len(ids) - len(word)):
        if ids[start:start + len(word)] == word:
            return start
    raise ValueError(f"forget prompt {prompt!r} does not contain the concept {concept!r} as whole tokens within "
                     f"its first {text.CONTEXT_LENGTH} tokens; UCE edits the concept's token positions, so every "
                     "forget prompt must name the concept")


def guide_positions(start: int, prompt_eos: int, anchor_eos: int, length: int) -> list[int]:
    """The anchor position that is the guide for each forget-prompt position start..length-1. Positions up to the
    EOS map to the anchor's EOS. Padding aligns from the EOS, clamped to the context."""
    return [min(anchor_eos + max(0, j - prompt_eos), length - 1) for j in range(start, length)]


def uce_token_vectors(pipe: MiniCanvasPipeline,
                      forget_set: ForgetSet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(concept c_e, guide c*_e, retain c_p) text vectors as rows, chosen as the module docstring says."""
    forget = pipe.encode(list(forget_set.forget_prompts))
    anchor = pipe.encode(list(forget_set.anchor_prompts))
    retain = pipe.encode(list(forget_set.retain_prompts))
    length = forget.shape[1]
    concept_rows, guide_rows = [], []
    for i, (prompt, anchor_prompt) in enumerate(zip(forget_set.forget_prompts, forget_set.anchor_prompts)):
        start = concept_start(pipe.tokenizer, prompt, forget_set.concept)
        prompt_eos = len(_prompt_ids(pipe.tokenizer, prompt)) - 1
        anchor_eos = len(_prompt_ids(pipe.tokenizer, anchor_prompt)) - 1
        concept_rows.append(forget[i, start:])
        guide_rows.append(anchor[i, guide_positions(start, prompt_eos, anchor_eos, length)])
    return torch.cat(concept_rows), torch.cat(guide_rows), retain.reshape(-1, retain.shape[-1])


@torch.no_grad()
def uce_edit(pipe: MiniCanvasPipeline, forget_set: ForgetSet, retain_scale: float = RETAIN_SCALE,
             regularization: float = REGULARIZATION) -> dict[str, torch.Tensor]:
    """UCE's weight deltas W' − W for every `attn2.to_k`/`attn2.to_v` of `pipe.denoiser`, keyed by the denoiser's
    parameter names. The pipeline itself is left unchanged."""
    concept, guide, retain = uce_token_vectors(pipe, forget_set)
    deltas = {}
    for name, module in pipe.denoiser.named_modules():
        parent, _, leaf = name.rpartition(".")
        if parent.endswith("attn2") and leaf in EDITED_PROJECTIONS:
            edited = uce_closed_form(module.weight, concept, guide, retain, retain_scale, regularization)
            deltas[f"{name}.weight"] = edited - module.weight
    return deltas
