"""Adapter for the MiniCanvas models (plain torch): the diffusion pipeline and the CLIP model.

Parameter names are those of a container with `text_encoder` and `denoiser` children (diffusion) or of
`transformers.CLIPModel` (CLIP), so an edit's keys say which tower they belong to.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from ..minicanvas.pipeline import TIMESTEP_MULTIPLIER, MiniCanvasPipeline
from ..minicanvas import text
from ..objective import Params
from ..kv_map import tokenizer_positions
from ..units import COMFY_STYLE, HF_CLIP_STYLE, EditUnit
from .base import DIFFUSION_BLOCKS, UnitModel, tower_units

CLIP_BLOCKS = ("vision", "text", "all")


def _overrides(params: Params, prefix: str) -> Params:
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


class MiniCanvasDiffusion(UnitModel):
    """The pipeline's trainable parts under one root, so parameter names carry their tower."""

    text_prefix = "text_encoder."
    allowed_blocks = DIFFUSION_BLOCKS

    def __init__(self, pipeline: MiniCanvasPipeline, granularity: str = "heads", blocks: str = "all"):
        super().__init__(granularity, blocks)
        self.pipeline = pipeline
        self.text_encoder = pipeline.text_encoder
        self.denoiser = pipeline.denoiser
        self.requires_grad_(False)

    @property
    def compute_dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    def units(self) -> list[EditUnit]:
        heads = self.granularity == "heads"
        units: list[EditUnit] = []
        if self.blocks in ("denoiser", "all"):
            units += tower_units(self.denoiser, COMFY_STYLE, "denoiser.", heads, ("ff.0", "ff.2"), keys_values=True)
        if self.blocks in ("text_encoder", "all"):
            units += tower_units(self.text_encoder, HF_CLIP_STYLE, "text_encoder.", heads, ("fc1", "fc2"))
        return units

    def encode(self, params: Params, prompts: list[str]) -> torch.Tensor:
        ids = text.tokenize(self.pipeline.tokenizer, prompts)
        out = functional_call(self.text_encoder, _overrides(params, "text_encoder."), (), {"input_ids": ids})
        return out.last_hidden_state

    def tokens(self, prompt: str) -> tuple[list[int], list[bool]]:
        return tokenizer_positions(self.pipeline.tokenizer, prompt, text.CONTEXT_LENGTH)

    def predict(self, params: Params, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return functional_call(self.denoiser, _overrides(params, "denoiser."), (x, t * TIMESTEP_MULTIPLIER, context))

    @staticmethod
    def noisy(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t[:, None, None, None]
        return (1 - t) * x0 + t * noise

    @staticmethod
    def denoise_target(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return noise - x0

    def sample(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        return self.pipeline.sample(prompts, seeds)


class MiniCanvasClip(UnitModel):
    """A `transformers.CLIPModel` seen as edit units; the projections stay frozen (they are no tower's layers)."""

    image_prefix = "vision_model."
    text_prefix = "text_model."
    allowed_blocks = CLIP_BLOCKS

    def __init__(self, clip_model: nn.Module, tokenizer, granularity: str = "heads", blocks: str = "all"):
        super().__init__(granularity, blocks)
        self.clip = clip_model
        self.tokenizer = tokenizer
        self.requires_grad_(False)

    def units(self) -> list[EditUnit]:
        heads = self.granularity == "heads"
        units: list[EditUnit] = []
        for tower, prefix in (("vision", "vision_model"), ("text", "text_model")):
            if self.blocks in (tower, "all"):
                units += tower_units(self.clip.get_submodule(prefix), HF_CLIP_STYLE, f"{prefix}.", heads,
                                      ("fc1", "fc2"))
        return units

    def params_root(self) -> nn.Module:
        return self.clip

    def image_features(self, params: Params, pixels: torch.Tensor) -> torch.Tensor:
        out = functional_call(self.clip.vision_model, _overrides(params, "vision_model."), (),
                              {"pixel_values": pixels})
        return self.clip.visual_projection(out.pooler_output)

    def text_features(self, params: Params, prompts: list[str]) -> torch.Tensor:
        ids = text.tokenize(self.tokenizer, prompts)
        out = functional_call(self.clip.text_model, _overrides(params, "text_model."), (), {"input_ids": ids})
        return self.clip.text_projection(out.pooler_output)

    def logit_scale(self) -> float:
        return float(self.clip.logit_scale.exp())
