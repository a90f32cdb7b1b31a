"""Adapter for ComfyUI's MODEL (a ModelPatcher) and CLIP objects, duck-typed: razor_core never imports ComfyUI.

Parameter names are the objects' own patch keys — `diffusion_model.…` for the MODEL, `clip_l.…` (and `clip_g.…`,
… where a CLIP holds several text encoders) for the CLIP — so an edit becomes `ModelPatcher.add_patches` without
translation, and every unit name starts with its tower.

What the caller (a node) must do first, because it needs ComfyUI itself: load the model fully
(`comfy.model_management.load_models_gpu`), so that its modules hold the weights with any earlier patches applied,
and wrap the whole run in `torch.inference_mode(False)`. ComfyUI loads weights as inference tensors, which autograd
cannot save, so the adapter runs every forward (`torch.func.functional_call`) on ordinary aliases of the towers'
weights (`gradients.ordinary_alias`: the same memory, no copy), never on the modules' own tensors, and never writes
to them. An adapter kept in a cached RAZOR_SCORES stays valid: ComfyUI patches weights out of place, so an alias
keeps the weights it was made for alive; a model patched in place gets its own patches back from the node's `load`
before every use.

Predictions are ComfyUI's denoised estimates (`BaseModel.apply_model`), which works the same for ε-, v- and
flow-models; timesteps t ∈ (0, 1) map to the model's own σ through its `model_sampling`. The model's inputs come
from the sampler's own path: the model's `extra_conds` turns the text encoder's outputs (context, pooled vector,
attention mask, ...) into its family's inputs, so guidance defaults, size embeddings and token counts are the ones
the sampler gives.

Families (denoiser units; each head edit leaves every other head's slices of a fused tensor bit-identical):
- UNets with ComfyUI's CrossAttention (SD1.x/2.x, SDXL): self-attention heads (`to_q`/`to_k`/`to_v`/`to_out.0`),
  cross-attention key/value heads (`attn2`), feed-forward linears;
- MMDiT (SD3/3.5) and Flux/Chroma double blocks: joint attention with one fused `qkv` and a `proj` per stream, a head
  being its three row blocks of `qkv` plus its columns of `proj`; the streams' MLPs;
- Flux/Chroma single-stream blocks: a head is its q, k and v rows of `linear1` and its columns of `linear2`, the MLP
  part of both one unit;
- Wan: self- and cross-attention heads (`q`/`k`/`v`/`o`; the cross-attention reads the text), `ffn`;
- Lumina 2 / Z-Image (NextDiT): grouped-query heads (one key/value head with the query heads that read it) of the
  caption refiner, the noise refiner and the main layers, `feed_forward.w1`-`w3`;
- Qwen-Image: the joint attention's image-stream heads and text-stream heads (`add_q/k/v_proj`, `to_add_out`), both
  streams' MLPs;
- HiDream: the double-stream attention's image- and text-stream heads (`to_q/k/v/out`, `to_q_t/k_t/v_t/out_t`), the
  single-stream heads, and every SwiGLU linear (the text stream's, the shared and each routed expert's; the router
  is not a candidate);
- the MiniCanvas DiT.
Text towers: ComfyUI's CLIP encoders (`clip_l`, `clip_g`); T5 and LLM encoders are not candidates (their attention
has another layout) but still encode. DiT blocks that add residuals in place (Flux, MMDiT's context blocks) are
differentiated through copies of their LayerNorms' inputs (`norm_inputs_copied`).
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from ..edit import fingerprint
from ..gradients import ordinary_alias
from ..objective import Params
from ..units import COMFY_STYLE, AttentionSpec, EditUnit, grouped_query_units, parallel_block_units
from .base import DIFFUSION_BLOCKS, UnitModel, tower_units

COMFY_CLIP_STYLE = AttentionSpec("q_proj", "k_proj", "v_proj", "out_proj", "heads")
# MMDiT's SelfAttention; the last context block is "pre-only" (no `proj`, so no head of its own: its keys and values
# reach the image stream only through that block's x-side heads).
MMDIT_STYLE = AttentionSpec("qkv", "qkv", "qkv", "proj", "num_heads", fused_qkv=True)
# Wan's self- and cross-attention (`self_attn`, `cross_attn`): separate projections named by one letter.
WAN_STYLE = AttentionSpec("q", "k", "v", "o", "num_heads")
# Qwen-Image's joint attention keeps the text stream's projections beside the image stream's (COMFY_STYLE).
QWEN_TEXT_STYLE = AttentionSpec("add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "heads", label="txt_head")
# HiDream's double-stream attention, likewise, with the text stream's projections suffixed `_t`.
HIDREAM_TEXT_STYLE = AttentionSpec("to_q_t", "to_k_t", "to_v_t", "to_out_t", "heads", label="txt_head")
# SwiGLU feed-forwards name their linears w1, w2, w3 (NextDiT's `feed_forward`, HiDream's `ff_t`, shared and routed
# experts).
DENOISER_MLP_LEAVES = ("ff.net.0.proj", "ff.net.2", "ff.0", "ff.2", "mlp.fc1", "mlp.fc2",
                       "img_mlp.0", "img_mlp.2", "txt_mlp.0", "txt_mlp.2", "ffn.0", "ffn.2",
                       ".w1", ".w2", ".w3", "mlp.net.0.proj", "mlp.net.2")
TEXT_MLP_LEAVES = ("mlp.fc1", "mlp.fc2")

# prompts, seeds -> latents (B, C, H, W): the node samples with ComfyUI's own sampler
Sampler = Callable[[list[str], list[int]], torch.Tensor]


class UnsupportedModelError(TypeError):
    """The object is not a ComfyUI MODEL/CLIP this adapter can read."""


@dataclass(frozen=True)
class TextConditioning:
    """The text encoder's output for a batch of prompts, as `CLIP.encode_from_tokens(return_dict=True)` gives it for
    one: the token sequence (cross-attention / joint-attention context), the pooled vector (None where the encoder
    gives none) and the encoder's other outputs (`extras`, e.g. an LLM encoder's attention mask), one row per
    prompt. Indexing selects prompts from each, as the objective does with a plain context tensor."""
    context: torch.Tensor
    pooled: torch.Tensor | None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __getitem__(self, index: Any) -> "TextConditioning":
        return TextConditioning(self.context[index], None if self.pooled is None else self.pooled[index],
                                {k: v[index] for k, v in self.extras.items()})

    @staticmethod
    def cat(parts: list["TextConditioning"]) -> "TextConditioning":
        lengths = {p.context.shape[1] for p in parts}
        if len(lengths) > 1:
            raise ValueError(f"the text encoder gave contexts of different lengths ({sorted(lengths)} tokens) for "
                             "the forget, anchor and retain prompts; RAZOR batches prompts and needs one length: "
                             "use prompts of similar length, or a text encoder that pads to a fixed length")
        pooled = [p.pooled for p in parts]
        keys = set(parts[0].extras)
        if any(set(p.extras) != keys for p in parts):
            raise ValueError("the text encoder gave different outputs for different prompts; cannot batch them")
        return TextConditioning(torch.cat([p.context for p in parts]),
                                None if any(p is None for p in pooled) else torch.cat(pooled),
                                {k: torch.cat([p.extras[k] for p in parts]) for k in keys})


def _out_of_place_forward(layer: nn.Module):
    """ComfyUI's CLIPLayer adds its residuals in place, which breaks autograd; the same computation out of place."""
    def forward(x, mask=None, optimized_attention=None):
        x = x + layer.self_attn(layer.layer_norm1(x), mask, optimized_attention)
        return x + layer.mlp(layer.layer_norm2(x))
    return forward


@contextmanager
def out_of_place_clip_layers(root: nn.Module) -> Iterator[None]:
    """Swap every CLIPLayer's forward for the out-of-place one, and always restore it (clones share the modules)."""
    layers = [m for m in root.modules() if type(m).__name__ == "CLIPLayer"]
    for layer in layers:
        layer.forward = _out_of_place_forward(layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward  # the instance attribute goes; the class's forward is back


def _copy_input(_module: nn.Module, args: tuple) -> tuple | None:
    if not torch.is_grad_enabled():
        return None
    return (args[0].clone(),) + args[1:]


@contextmanager
def norm_inputs_copied(root: nn.Module) -> Iterator[None]:
    """Every LayerNorm under `root` normalises a copy of its input while gradients are on. DiT blocks (Flux's,
    MMDiT's context blocks) add their residuals in place (`img += ...`) into the tensor their LayerNorm saved for
    the backward pass, which autograd refuses; the copy is what the norm saves, so the in-place add no longer
    touches it. Without gradients (sampling, validation) nothing is copied."""
    handles = [m.register_forward_pre_hook(_copy_input) for m in root.modules()
               if type(m).__name__.endswith("LayerNorm")]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _copied(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A block's inputs with every tensor among them cloned: DiT blocks add their residuals into their input in place
    (`x += ...`), which would change what the recomputation starts from."""
    def copy(value: Any) -> Any:
        return value.clone() if isinstance(value, torch.Tensor) else value
    return tuple(copy(a) for a in args), {k: copy(v) for k, v in kwargs.items()}


def _checkpointed_forward(block: nn.Module) -> Callable[..., Any]:
    """`block`'s forward, recomputed in the backward pass instead of keeping its activations while gradients are on
    (as ComfyUI's own LoRA trainer does). Runs inside `functional_call`, so the recomputation, which comes after that
    call has put the module's own weights back, puts the same tensors (weights, leaves, θ + Δ) in place again."""
    original, names = block.forward, [name for name, _ in block.named_parameters()]
    recomputing = False

    def forward(*args: Any, **kwargs: Any) -> Any:
        nonlocal recomputing
        if recomputing or not torch.is_grad_enabled():
            return original(*args, **kwargs)
        tensors = {name: attrgetter(name)(block) for name in names}  # what functional_call put in place

        def run(args: tuple, kwargs: dict) -> Any:
            nonlocal recomputing
            recomputing = True
            try:
                with norm_inputs_copied(block):
                    return functional_call(block, tensors, *_copied(args, kwargs))
            finally:
                recomputing = False
        return checkpoint(run, args, kwargs, use_reentrant=False)
    return forward


@contextmanager
def checkpointed_blocks(denoiser: nn.Module) -> Iterator[None]:
    """Every block of the denoiser's block lists (UNet input/output blocks, DiT blocks) keeps only its inputs for the
    backward pass and recomputes the rest there: the activations a gradient keeps grow with the blocks x tokens
    (Flux-dev at 1024², one sample in bf16: about 0.7 GB a block, 40 GB in all; checkpointed, 2.2 GB;
    benchmarks/flux_memory.py), for one more forward pass per backward. Always restored (clones share the
    modules)."""
    blocks = [block for child in denoiser.children() if isinstance(child, nn.ModuleList) for block in child]
    with ExitStack() as restore:
        for block in blocks:
            block.forward = _checkpointed_forward(block)
            restore.callback(delattr, block, "forward")  # the instance attribute goes; the class's forward is back
        yield


class ComfyDiffusion(UnitModel):
    """A ComfyUI MODEL and (optionally) its CLIP as one diffusion model for `DiffusionObjective`."""

    allowed_blocks = DIFFUSION_BLOCKS

    def __init__(self, model: Any, clip: Any | None, sampler: Sampler, granularity: str = "heads",
                 blocks: str = "all"):
        super().__init__(granularity, blocks)
        base = getattr(model, "model", None)
        if base is None or not hasattr(base, "apply_model") or not hasattr(base, "diffusion_model"):
            raise UnsupportedModelError(f"expected a ComfyUI MODEL (ModelPatcher), got {type(model).__name__}")
        if clip is None and blocks != "denoiser":
            raise ValueError(f"blocks={blocks!r} edits the text encoder, but no CLIP was given: connect the CLIP, "
                             "or choose blocks='denoiser'")
        self._base = [base]  # a list, so the BaseModel's own submodules are not registered twice
        self._clip = [clip]
        self._sampler = sampler
        self.diffusion_model = base.diffusion_model
        towers = dict(clip.cond_stage_model.named_children()) if clip is not None else {}
        for name, module in towers.items():
            self.add_module(name, module)
        self.text_prefix = tuple(f"{name}." for name in towers)
        self.requires_grad_(False)
        self._check_editable()  # before the node generates a single image
        self._weights = {k: ordinary_alias(v) for k, v in self.named_parameters()}  # see the module doc
        self._owners = {k: self.get_submodule(k.rsplit(".", 1)[0]) for k in self._weights}
        self._theta0: dict[str, torch.Tensor] = {}

    def _check_editable(self) -> None:
        """Refuse a model RAZOR cannot edit: no candidate units for the chosen blocks, or candidates stored as a
        tensor subclass that decodes itself (GGUF's quantised weights): their values are codes, not weights, so
        there is no gradient to follow and no weight to add a difference to."""
        units = self.units()
        if not units:
            other = "" if self.blocks == "all" else ", or try blocks='all'"
            raise UnsupportedModelError(
                f"RAZOR finds no units to edit in this {type(self.diffusion_model).__name__} with "
                f"blocks={self.blocks!r}: its attention/MLP layout is not one it knows yet{other}")
        params = dict(self.named_parameters())
        encoded = sorted({type(params[p]).__name__ for u in units for p in u.params
                          if type(params[p]) not in (torch.Tensor, nn.Parameter)})
        if encoded:
            raise UnsupportedModelError(
                f"the weights RAZOR would edit are stored as {', '.join(encoded)} (quantised, e.g. a GGUF file): "
                "load the model unquantised for unlearning (the stock loaders, with weight_dtype default, fp16, "
                "bf16 or fp8)")

    @property
    def device(self) -> torch.device:
        return next(iter(self._weights.values())).device

    @property
    def compute_dtype(self) -> torch.dtype:
        base = self._base[0]
        return base.manual_cast_dtype or base.get_dtype()  # what apply_model casts its inputs to

    def base_params(self, units: list[EditUnit]) -> Params:
        """θ⁰ as the forwards use it. ComfyUI's manual-cast layers (its text encoders, always) may compute in a wider
        dtype than they store: their half-precision weights are float32 here (converted once), so that their
        gradients are not rounded to the storage dtype. Float8 weights (fp8 checkpoints) stay as stored: razor_core
        widens them only where it computes with them (`objective.computable`: the scored group's gradient leaves,
        the edit set's steps), since a float32 copy of every candidate would be 4x the model. Other layers compute
        in their own dtype, gradients included: their weights serve as they are (no float32 copy of a GPU UNet's
        candidates)."""
        for p in (p for u in units for p in u.params):
            if p not in self._theta0:
                w = self._weights[p]
                widen = getattr(self._owners[p], "comfy_cast_weights", False) and w.element_size() == 2
                self._theta0[p] = w.float() if widen and w.is_floating_point() else w
        return {p: self._theta0[p] for u in units for p in u.params}

    def fingerprint(self, names: list[str]) -> str:
        """Of the weights as they were when this adapter was made (the edit's base)."""
        return fingerprint({k: self._weights[k] for k in names})

    def units(self) -> list[EditUnit]:
        heads = self.granularity == "heads"
        units: list[EditUnit] = []
        if self.blocks in ("denoiser", "all"):
            units += tower_units(self.diffusion_model, COMFY_STYLE, "diffusion_model.", heads, DENOISER_MLP_LEAVES,
                                  keys_values=True)
            units += tower_units(self.diffusion_model, MMDIT_STYLE, "diffusion_model.", heads, ())
            units += tower_units(self.diffusion_model, WAN_STYLE, "diffusion_model.", heads, ())
            units += tower_units(self.diffusion_model, QWEN_TEXT_STYLE, "diffusion_model.", heads, ())
            units += tower_units(self.diffusion_model, HIDREAM_TEXT_STYLE, "diffusion_model.", heads, ())
            units += parallel_block_units(self.diffusion_model, "diffusion_model.", heads)
            units += grouped_query_units(self.diffusion_model, "diffusion_model.", heads)
        if self.blocks in ("text_encoder", "all"):
            for prefix in self.text_prefix:
                units += tower_units(self.get_submodule(prefix[:-1]), COMFY_CLIP_STYLE, prefix, heads,
                                      TEXT_MLP_LEAVES)
        return units

    def forward(self, op: str, *args: Any) -> torch.Tensor:
        """Dispatch for `functional_call` (it can only call `forward`)."""
        if op == "predict":
            x, sigma, conditioning = args
            return self._base[0].apply_model(x, sigma, **self._model_inputs(x, conditioning))
        tokens, = args
        return self._clip[0].cond_stage_model.encode_token_weights(tokens)

    def _model_inputs(self, x: torch.Tensor, conditioning: TextConditioning) -> dict[str, Any]:
        """The keyword inputs of `apply_model` for a batch (one prompt's conditioning per sample), built as the
        sampler builds them: each sample's conds from the model's own `extra_conds` (`encode_model_conds`: a pooled
        vector's `y` with SDXL's size embedding, Flux's default guidance, an LLM encoder's token count, ...), then
        `process_cond` and `concat` across the batch (`calc_cond_batch`). The size is the latent's ×8, the
        default the sampler gives."""
        base = self._base[0]
        per_sample = []
        for i in range(x.shape[0]):
            c = conditioning[i:i + 1]
            conds = base.extra_conds(cross_attn=c.context, pooled_output=c.pooled, **c.extras, device=x.device,
                                     noise=x[i:i + 1], width=x.shape[-1] * 8, height=x.shape[-2] * 8,
                                     prompt_type="positive")
            per_sample.append({k: cond.process_cond(batch_size=1, area=None) for k, cond in conds.items()})
        first, rest = per_sample[0], per_sample[1:]
        if any(p.keys() != first.keys() or not all(first[k].can_concat(p[k]) for k in first) for p in rest):
            raise ValueError("the forget, anchor and retain prompts give this model inputs that cannot be batched "
                             "(e.g. different token counts); use prompts of similar length")
        return {k: cond.concat([p[k] for p in rest]) for k, cond in first.items()}

    def _as_module_dtype(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """A candidate parameter in the dtype its layer computes with. ComfyUI's manual-cast layers (its text
        encoders, always) cast the weight to the input's dtype themselves, so they take the float32 value as it is
        and its gradient stays float32; plain layers need their own dtype (differentiable cast)."""
        dtype = self._weights[name].dtype
        if value.dtype == dtype or getattr(self._owners[name], "comfy_cast_weights", False):
            return value
        return value.to(dtype)

    def _call(self, params: Params, *args: Any) -> torch.Tensor:
        overrides = {k: self._as_module_dtype(k, v) for k, v in params.items()}
        return functional_call(self, {**self._weights, **overrides}, args)

    def encode(self, params: Params, prompts: list[str]) -> TextConditioning:
        clip = self._clip[0]
        if clip is None:
            raise ValueError("text features need the CLIP: connect it to the node")
        # The CLIP's own layer choice (CLIPSetLastLayer, "clip skip"), as `CLIP.encode_from_tokens` applies it, so
        # the losses see the conditioning the sampler sees.
        clip.cond_stage_model.reset_clip_options()
        if getattr(clip, "layer_idx", None) is not None:
            clip.cond_stage_model.set_clip_options({"layer": clip.layer_idx})
        parts = []
        with out_of_place_clip_layers(self):
            for p in prompts:
                context, pooled, *rest = self._call(params, "encode", clip.tokenize(p))
                extras = {k: v.to(self.device) for k, v in (rest[0] if rest else {}).items()
                          if isinstance(v, torch.Tensor)}
                parts.append(TextConditioning(context.to(self.device),
                                              None if pooled is None else pooled.to(self.device), extras))
        return TextConditioning.cat(parts)

    def tokens(self, prompt: str) -> tuple[list[int], list[bool]]:
        """The token id at each context position of the CLIP's first tokenizer (CLIP-L where there is one: SDXL's
        encoders share its positions), and whether it holds a word of the prompt (ComfyUI's word ids are 0 on
        start, end and padding tokens). Prompts longer than one chunk give the chunks in order, as the context does."""
        clip = self._clip[0]
        if clip is None:
            raise ValueError("token positions need the CLIP: connect it to the node")
        streams = clip.tokenize(prompt, return_word_ids=True)
        chunks = streams["l"] if "l" in streams else next(iter(streams.values()))
        flat = [token for chunk in chunks for token in chunk]
        return [int(t[0]) for t in flat], [t[2] != 0 for t in flat]

    def sigmas(self, t: torch.Tensor) -> torch.Tensor:
        sampling = self._base[0].model_sampling
        return torch.tensor([float(sampling.percent_to_sigma(1.0 - float(v))) for v in t], device=self.device)

    def predict(self, params: Params, x: torch.Tensor, t: torch.Tensor, context: TextConditioning) -> torch.Tensor:
        with norm_inputs_copied(self.diffusion_model), checkpointed_blocks(self.diffusion_model):
            return self._call(params, "predict", x.to(self.device), self.sigmas(t), context)

    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = self.sigmas(t)
        return self._base[0].model_sampling.noise_scaling(sigma, noise.to(self.device), x0.to(self.device))

    def denoise_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x0.to(self.device)  # apply_model predicts the denoised sample

    def sample(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        return self._sampler(prompts, seeds).to(self.device)
