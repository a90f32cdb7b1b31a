"""Text-to-image diffusion objective (SPEC §3, decided where the paper is silent).

Forget: map the concept's conditioning onto an anchor's, measured on the denoiser's prediction (ESD / Concept
Ablation in one step). With p_θ the model's prediction and p⁰ the frozen model's, the target for a noisy concept
sample is  p* = p⁰(anchor) − γ·(p⁰(concept) − p⁰(anchor))  (γ = negative guidance away from the concept), and

    forget_loss(θ) = 1 − ‖p_θ(concept) − p*‖² / ‖p⁰(concept) − p*‖²

is 0 at θ⁰ and 1 once the concept prompt predicts exactly p*: the step increases it.
Retain: the denoising loss on retain prompts, with images the frozen model generated itself (users need not bring
any). Mismatch: drift of the retain predictions from the frozen model's, relative to the forget gap.
Validation uses other images, noise and timesteps than the gradients.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, is_dataclass, replace
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch
from torch import nn

from ..batching import halve, retry_smaller
from ..forget_set import ForgetSet
from ..kv_map import KeyValueMap, concept_positions, reproducing_rows, text_vectors
from ..objective import Objective, Params, Validation, require_finite
from ..units import EditUnit


class DiffusionModel(Protocol):
    """What the objective needs from a model family's adapter."""

    text_prefix: str  # parameter-name prefix of the text encoder(s)
    compute_dtype: torch.dtype  # what the denoiser computes in (float16 turns on loss scaling)

    # `encode` returns the conditioning of a batch of prompts in whatever form the adapter's `predict` takes (a
    # context tensor, or context plus pooled vector); the objective only indexes it along the prompt dimension.
    def units(self) -> list[EditUnit]: ...
    def base_params(self, units: list[EditUnit]) -> Params: ...
    def encode(self, params: Params, prompts: list[str]) -> Any: ...
    def tokens(self, prompt: str) -> tuple[list[int], list[bool]]: ...  # per context position: id, is a word
    def predict(self, params: Params, x: torch.Tensor, t: torch.Tensor, context: Any) -> torch.Tensor: ...
    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...
    def denoise_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor: ...
    def sample(self, prompts: list[str], seeds: list[int]) -> torch.Tensor: ...
    def params_root(self) -> nn.Module: ...


FLOAT16_GRADIENT_SCALE = 2.0 ** 12  # the losses' gradients at the output are ~1e-6 (means over latents), below
                                    # fp16's smallest normal number (6e-5); overflow backs off (gradients.py)


@dataclass(frozen=True)
class DiffusionSettings:
    guidance: float = 1.0            # γ: how far past the anchor, away from the concept
    timesteps_per_image: int = 4     # noisy samples per generated image (gradient split)
    micro_batch: int = 8             # bounds the activations kept for backward (MiniCanvas peak RSS: 1.41 GB at 64,
                                     # 1.05 at 16, 0.95-0.98 at 8, which costs ~1.5 s more per run than 16;
                                     # benchmarks/compare.py and benchmarks/profile_razor.py measure both)
    validation_batch: int = 64       # no-grad batches of the validation probes and the preconditioner's retain pass
                                     # (nothing kept for backward; 16 -> 64 made a MiniCanvas probe ~12% faster)
                                     # Both are the most a batch holds: out of memory, they halve (batching.py).
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("timesteps_per_image", "micro_batch", "validation_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class _Split:
    x: torch.Tensor            # noisy inputs
    t: torch.Tensor
    prompt: torch.Tensor       # index into the prompt table
    target: torch.Tensor       # forget: p*; retain: denoising target
    frozen: torch.Tensor       # frozen model's prediction for the prompt (retain drift; forget: p⁰(concept))


class DiffusionObjective(Objective):
    def __init__(self, model: DiffusionModel, forget_set: ForgetSet, settings: DiffusionSettings = DiffusionSettings()):
        self.model = model
        self.settings = settings
        self.micro_batch, self.validation_batch = settings.micro_batch, settings.validation_batch
        if model.compute_dtype == torch.float16:
            self.gradient_scale = FLOAT16_GRADIENT_SCALE
        self._units = model.units()
        self._theta0 = model.base_params(self._units)
        require_finite(self._theta0, "the model's weights", "a checkpoint, merge or LoRA upstream is broken; "
                       "load the model again without it")
        self._text_keys = [k for k in self._theta0 if k.startswith(model.text_prefix)]
        self.forget_set = forget_set
        self._key_value_map: KeyValueMap | None = None
        gen = torch.Generator().manual_seed(settings.seed)
        n_f = len(forget_set.forget_prompts)
        self.prompts = list(forget_set.forget_prompts) + list(forget_set.anchor_prompts) + list(
            forget_set.retain_prompts)
        with torch.no_grad():
            self._context0 = model.encode(self._theta0, self.prompts)
            # Self-generated data: each forget prompt drawn twice (gradient + validation), retain prompts once each.
            f_idx = torch.arange(n_f).repeat(2)
            if forget_set.images is not None:
                x0_f = forget_set.images[torch.arange(len(f_idx)) % len(forget_set.images)]
            else:
                x0_f = model.sample([self.prompts[i] for i in f_idx], [settings.seed * 100003 + k
                                                                       for k in range(len(f_idx))])
            r_idx = torch.arange(len(forget_set.retain_prompts)) + 2 * n_f
            x0_r = model.sample([self.prompts[i] for i in r_idx], [settings.seed * 100003 + 50000 + k
                                                                   for k in range(len(r_idx))])
            require_finite({"forget": x0_f, "retain": x0_r}, "the forget/retain images",
                           "the images given, or the ones the model drew (check the sampler's cfg and steps)")
            half = len(f_idx) // 2
            self.forget = self._forget_split(x0_f[:half], f_idx[:half], n_f, gen, settings.timesteps_per_image)
            self.forget_val = self._forget_split(x0_f[half:], f_idx[half:], n_f, gen, 2)
            retain_all = self._retain_split(x0_r, r_idx, gen, 2)
            n_r = len(retain_all.x)
            perm = torch.randperm(n_r, generator=gen)
            cut = max(1, n_r // 3)
            self.retain_val = _take(retain_all, perm[:cut])
            self.retain = _take(retain_all, perm[cut:]) if n_r > 1 else retain_all
            require_finite({"forget": self.forget.frozen, "retain": self.retain.frozen}, "the model's predictions",
                           "the model computes NaN on these inputs; check its weights and the conditioning")
            self.gap = float((self.forget.frozen - self.forget.target).pow(2).mean())
            self.gap_val = float((self.forget_val.frozen - self.forget_val.target).pow(2).mean())
        if self.gap <= 0 or self.gap_val <= 0:
            raise ValueError("the concept and its anchor produce identical predictions: the model does not "
                             "distinguish them, so there is nothing to forget (check the concept and anchor)")

    # ---------------------------------------------------------------------------------------------- data
    def _noised(self, x0: torch.Tensor, prompt_idx: torch.Tensor, gen: torch.Generator, per_image: int):
        x0 = x0.repeat_interleave(per_image, 0)
        idx = prompt_idx.repeat_interleave(per_image, 0)
        # Stratified timesteps over (0.02, 0.98): every image sees the whole noise range.
        strata = torch.arange(per_image).repeat(len(prompt_idx)).float()
        t = ((strata + torch.rand(len(x0), generator=gen)) / per_image).clamp(0.02, 0.98)
        noise = torch.randn(x0.shape, generator=gen)
        return self.model.noisy(x0, noise, t), t, idx, x0, noise

    def _forget_split(self, x0, prompt_idx, n_f, gen, per_image) -> _Split:
        x, t, idx, _, _ = self._noised(x0, prompt_idx, gen, per_image)
        p_concept = self._predict(self._theta0, x, t, idx)
        p_anchor = self._predict(self._theta0, x, t, idx + n_f)
        target = p_anchor - self.settings.guidance * (p_concept - p_anchor)
        return _Split(x, t, idx, target, p_concept)

    def _retain_split(self, x0, prompt_idx, gen, per_image) -> _Split:
        x, t, idx, x0_rep, noise = self._noised(x0, prompt_idx, gen, per_image)
        frozen = self._predict(self._theta0, x, t, idx)
        return _Split(x, t, idx, self.model.denoise_target(x0_rep, noise, t), frozen)

    def _predict(self, params: Params, x, t, prompt_idx, batch: str = "micro_batch") -> torch.Tensor:
        """Predictions in batches of the size attribute `batch` (halved if they run out of memory); the prompts are
        encoded once for the whole call, not per batch."""
        unique, inverse = prompt_idx.unique(return_inverse=True)
        contexts = self._contexts(params, unique)

        def run() -> torch.Tensor:
            size = getattr(self, batch)
            return torch.cat([self.model.predict(params, x[s:s + size], t[s:s + size], contexts[inverse[s:s + size]])
                              for s in range(0, len(x), size)])
        return retry_smaller(run, lambda: halve(self, batch), "the predictions")

    def _contexts(self, params: Params, prompt_idx: torch.Tensor) -> Any:
        # Untouched text-encoder weights are the very θ⁰ tensors (steps only replace what they change).
        if all(params[k] is self._theta0[k] for k in self._text_keys):
            return self._context0[prompt_idx]
        unique, inverse = prompt_idx.unique(return_inverse=True)
        return self.model.encode(params, [self.prompts[i] for i in unique.tolist()])[inverse]

    # ---------------------------------------------------------------------------------------------- Objective
    def units(self) -> list[EditUnit]:
        return self._units

    def base_params(self) -> Params:
        return self._theta0

    def batches(self, split: str) -> Iterator[tuple[_Split, slice]]:
        data = self.forget if split == "forget" else self.retain
        size = self.micro_batch
        for s in range(0, len(data.x), size):
            yield data, slice(s, s + size)

    def smaller_batches(self) -> bool:
        return halve(self, "micro_batch")

    def _pred(self, params: Params, batch) -> tuple[torch.Tensor, _Split, slice]:
        data, sl = batch
        return self.model.predict(params, data.x[sl], data.t[sl], self._contexts(params, data.prompt[sl])), data, sl

    def forget_loss(self, params: Params, batch) -> torch.Tensor:
        pred, data, sl = self._pred(params, batch)
        return 1.0 - (pred - data.target[sl]).pow(2).mean() / self.gap

    def retain_loss(self, params: Params, batch) -> torch.Tensor:
        pred, data, sl = self._pred(params, batch)
        return (pred - data.target[sl]).pow(2).mean()

    def retain_outputs(self, params: Params, batch) -> torch.Tensor:
        return self._pred(params, batch)[0]

    def mismatch_loss(self, params: Params, batch) -> torch.Tensor:
        pred, data, sl = self._pred(params, batch)
        return (pred - data.frozen[sl]).pow(2).mean() / self.gap

    def module_root(self) -> nn.Module | None:
        return self.model.params_root()

    def key_value_map(self, attacked: Sequence[Any] = ()) -> KeyValueMap:
        """The closed-form map of the concept's cross-attention keys/values onto the anchor's, solved on the frozen
        text encoder's contexts (built on first use); with `attacked` (forget-prompt contexts from
        `attack_contexts`), solved on their concept positions too, each aligned to the anchor as its prompt is."""
        fs = self.forget_set
        n_f = len(fs.forget_prompts)
        context = _tensor(self._context0)
        if self._key_value_map is None:
            vectors = text_vectors(context[:n_f], context[n_f:2 * n_f], context[2 * n_f:], list(fs.forget_prompts),
                                   list(fs.anchor_prompts), fs.concept, self.model.tokens)
            self._key_value_map = KeyValueMap(vectors, self._theta0)
        solved = self._key_value_map
        for contexts in attacked:
            solved = solved.with_rows(text_vectors(_tensor(contexts), context[n_f:2 * n_f], context[2 * n_f:],
                                                   list(fs.forget_prompts), list(fs.anchor_prompts), fs.concept,
                                                   self.model.tokens))
        return solved

    def attack_contexts(self, params: Params, weights: list[str]) -> Any:
        """The forget prompts' contexts with every concept position replaced by what the closed-form adversary
        (`kv_map.reproducing_rows`) feeds the key/value projections `weights` at `params` to get back the original
        model's keys/values: an attack in context space, where every conditioning path (soft tokens, another text
        encoder, an image prompt) meets the denoiser."""
        fs = self.forget_set
        n_f = len(fs.forget_prompts)
        clean = self._context0[:n_f]
        tensor = _tensor(clean).clone()
        current = [params[k] for k in weights]
        original = [self._theta0[k] for k in weights]
        for i, start in enumerate(concept_positions(list(fs.forget_prompts), fs.concept, self.model.tokens,
                                                    tensor.shape[1])):
            if start is not None:
                tensor[i, start:] = reproducing_rows(tensor[i, start:], current, original)
        return _with_tensor(clean, tensor)

    def under_attack(self, contexts: Any) -> "DiffusionObjective":
        """This objective with the forget prompts conditioned by `contexts` (from `attack_contexts`): its validation
        measures forget progress under that attack. It shares every tensor with this one."""
        attacked = copy.copy(self)
        n_f = len(self.forget_set.forget_prompts)
        rest = self._context0[n_f:]
        attacked._context0 = (type(rest).cat([contexts, rest]) if hasattr(rest, "cat")
                              else torch.cat([contexts, rest]))
        return attacked

    def run_retain(self, params: Params) -> None:
        # The text encoder on the retain prompts explicitly: below, untouched text weights reuse cached contexts.
        self.model.encode(params, [self.prompts[i] for i in self.retain.prompt.unique().tolist()])
        with torch.no_grad():  # nothing kept for backward: the large batches of the validation probes
            self._predict(params, self.retain.x, self.retain.t, self.retain.prompt, "validation_batch")

    def validate(self, params: Params) -> Validation:
        progress, drift = self.validate_forget_first(params)
        return Validation(progress, drift())

    def validate_forget_first(self, params: Params) -> tuple[float, Callable[[], float]]:
        f = self._predict(params, self.forget_val.x, self.forget_val.t, self.forget_val.prompt, "validation_batch")
        progress = 1.0 - float((f - self.forget_val.target).pow(2).mean()) / self.gap_val

        def drift() -> float:
            r = self._predict(params, self.retain_val.x, self.retain_val.t, self.retain_val.prompt, "validation_batch")
            return float((r - self.retain_val.frozen).pow(2).mean()) / self.gap_val
        return progress, drift


def _tensor(conditioning: Any) -> torch.Tensor:
    """The token sequence of an adapter's conditioning (the conditioning itself when it is a tensor)."""
    return getattr(conditioning, "context", conditioning)


def _with_tensor(conditioning: Any, tensor: torch.Tensor) -> Any:
    """`conditioning` with its token sequence replaced (an adapter's dataclass, or the tensor itself)."""
    return replace(conditioning, context=tensor) if is_dataclass(conditioning) else tensor


def _take(split: _Split, idx: torch.Tensor) -> _Split:
    return _Split(split.x[idx], split.t[idx], split.prompt[idx], split.target[idx], split.frozen[idx])
