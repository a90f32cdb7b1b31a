"""UCE baseline: Unified Concept Editing (Gandikota, Orgad, Belinkov, Materzyńska, Bau, WACV 2024; arXiv 2308.14761).

UCE edits every cross-attention key and value projection W (here `to_k`, `to_v` of each MiniDiT `attn2`) in closed
form, so that the concept's text vectors c_e produce what the guide (anchor) vectors c*_e produced before, while the
retain vectors c_p keep their outputs:

    W' = argmin Σ_e ‖W'c_e − W c*_e‖² + λ Σ_p ‖W'c_p − W c_p‖² + γ ‖W' − W‖²_F
       = (Σ_e W c*_e c_eᵀ + λ Σ_p W c_p c_pᵀ + γ W) (Σ_e c_e c_eᵀ + λ Σ_p c_p c_pᵀ + γ I)⁻¹.

There is no training. The cost is one text-encoder pass and one 128×128 solve per projection (12 on MiniDiT). The
closed form and the token alignment are RAZOR's own key/value map (`razor_core/kv_map.py`), which RAZOR uses as its
step for the same projections; UCE is that map applied once, to every projection, at full strength.

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
from razor_core.kv_map import REGULARIZATION, RETAIN_SCALE, closed_form, text_vectors, tokenizer_positions
from razor_core.minicanvas import text
from razor_core.minicanvas.pipeline import MiniCanvasPipeline

EDITED_PROJECTIONS = ("to_k", "to_v")


def uce_token_vectors(pipe: MiniCanvasPipeline,
                      forget_set: ForgetSet) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(concept c_e, guide c*_e, retain c_p) text vectors as rows, chosen as the module docstring says (the same
    alignment RAZOR's key/value map uses, `razor_core.kv_map`)."""
    vectors = text_vectors(pipe.encode(list(forget_set.forget_prompts)), pipe.encode(list(forget_set.anchor_prompts)),
                           pipe.encode(list(forget_set.retain_prompts)), list(forget_set.forget_prompts),
                           list(forget_set.anchor_prompts), forget_set.concept,
                           lambda prompt: tokenizer_positions(pipe.tokenizer, prompt, text.CONTEXT_LENGTH))
    return vectors.concept, vectors.guide, vectors.retain


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
            edited = closed_form(module.weight, concept, guide, retain, retain_scale, regularization)
            deltas[f"{name}.weight"] = edited - module.weight
    return deltas
