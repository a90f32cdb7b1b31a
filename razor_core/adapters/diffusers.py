"""Adapter for diffusers text-to-image models: a `UNet2DConditionModel` (the SD1.x/2.x layout) conditioned by a
`transformers.CLIPTextModel`, with the diffusers noise scheduler that defines its noise schedule.

Parameter names carry their tower (`unet.…`, `text_encoder.…`). Timesteps t ∈ (0, 1) map to the scheduler's
discrete training timesteps; the denoising target follows the scheduler's `prediction_type` (ε, v or the sample).
Half-precision models keep their weights: as in the ComfyUI adapter, θ⁰ of the candidate units is held in float32
(gradients, scores and accumulated steps need it) and cast to the layer's dtype inside the forward, differentiably,
so the validation probes see θ⁰ + Δ rounded as the half-precision model will hold it once the edit is applied.
Self-generated images are latents drawn with classifier-free guidance by a fresh copy of the scheduler.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from ..batching import halve, retry_smaller
from ..objective import Params
from ..kv_map import tokenizer_positions
from ..units import COMFY_STYLE, HF_CLIP_STYLE, EditUnit
from .base import DIFFUSION_BLOCKS, UnitModel, tower_units
from .comfy import DENOISER_MLP_LEAVES


class DiffusersText2Image(UnitModel):
    """A diffusers UNet and its CLIP text encoder as one diffusion model for `DiffusionObjective`."""

    text_prefix = "text_encoder."
    allowed_blocks = DIFFUSION_BLOCKS

    def __init__(self, unet: nn.Module, text_encoder: nn.Module, tokenizer, scheduler, granularity: str = "heads",
                 blocks: str = "all", sample_steps: int = 20, guidance_scale: float = 7.5, latent_size: int = 64,
                 sample_batch: int = 8):
        super().__init__(granularity, blocks)
        prediction = getattr(scheduler.config, "prediction_type", "epsilon")
        if prediction not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unsupported prediction_type {prediction!r}: expected epsilon, v_prediction or sample")
        if sample_steps < 1 or sample_batch < 1 or latent_size < 1:
            raise ValueError("sample_steps, sample_batch and latent_size must be at least 1")
        self.unet = unet
        self.text_encoder = text_encoder
        self.requires_grad_(False)
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.prediction = prediction
        self.sample_steps, self.guidance_scale = sample_steps, guidance_scale
        self.latent_size, self.sample_batch = latent_size, sample_batch
        self._alphas = scheduler.alphas_cumprod.to(torch.float32)
        self._dtypes = {k: v.dtype for k, v in self.named_parameters()}

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def compute_dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def units(self) -> list[EditUnit]:
        heads = self.granularity == "heads"
        units: list[EditUnit] = []
        if self.blocks in ("denoiser", "all"):
            units += tower_units(self.unet, COMFY_STYLE, "unet.", heads, DENOISER_MLP_LEAVES, keys_values=True)
        if self.blocks in ("text_encoder", "all"):
            units += tower_units(self.text_encoder, HF_CLIP_STYLE, self.text_prefix, heads, ("fc1", "fc2"))
        return units

    def _call(self, tower: str, params: Params, args: tuple, kwargs: dict):
        """`tower`'s forward with `params` in place of its weights, each cast to the dtype its layer computes in."""
        prefix = f"{tower}."
        overrides = {k[len(prefix):]: v.to(self._dtypes[k]) for k, v in params.items() if k.startswith(prefix)}
        return functional_call(getattr(self, tower), overrides, args, kwargs)

    def encode(self, params: Params, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        return self._call("text_encoder", params, (), {"input_ids": ids}).last_hidden_state

    def tokens(self, prompt: str) -> tuple[list[int], list[bool]]:
        return tokenizer_positions(self.tokenizer, prompt, self.tokenizer.model_max_length)

    def _timesteps(self, t: torch.Tensor) -> torch.Tensor:
        return (t.to(self.device, torch.float32) * (len(self._alphas) - 1)).round().long()

    def predict(self, params: Params, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype
        out = self._call("unet", params, (x.to(self.device, dtype), self._timesteps(t), context.to(dtype)), {})
        return out.sample.float()

    def _alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self._alphas.to(self.device)[self._timesteps(t)][:, None, None, None]

    def noisy(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = self._alpha(t)
        return a.sqrt() * x0.to(self.device) + (1 - a).sqrt() * noise.to(self.device)

    def denoise_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x0, noise = x0.to(self.device), noise.to(self.device)
        if self.prediction == "epsilon":
            return noise
        if self.prediction == "sample":
            return x0
        a = self._alpha(t)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    @torch.no_grad()
    def sample(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        """Latents drawn by the frozen model, `sample_batch` prompts at a time (halved if that runs out of memory),
        each from its own seed."""
        return retry_smaller(lambda: self._sample(prompts, seeds), lambda: halve(self, "sample_batch"),
                             "drawing the forget/retain images")

    def _sample(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        dtype = self.compute_dtype
        uncond = self.encode({}, [""])
        out = []
        for s in range(0, len(prompts), self.sample_batch):
            batch_prompts, batch_seeds = prompts[s:s + self.sample_batch], seeds[s:s + self.sample_batch]
            scheduler = type(self.scheduler).from_config(self.scheduler.config)
            scheduler.set_timesteps(self.sample_steps, device=self.device)
            shape = (self.unet.config.in_channels, self.latent_size, self.latent_size)
            latents = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(seed))
                                   for seed in batch_seeds]).to(self.device) * scheduler.init_noise_sigma
            context = torch.cat([uncond.expand(len(batch_prompts), -1, -1), self.encode({}, batch_prompts)])
            for step in scheduler.timesteps:
                model_in = scheduler.scale_model_input(torch.cat([latents, latents]), step)
                pred = self.unet(model_in.to(dtype), step, context.to(dtype)).sample.float()
                pred_uncond, pred_cond = pred.chunk(2)
                latents = scheduler.step(pred_uncond + self.guidance_scale * (pred_cond - pred_uncond), step,
                                         latents).prev_sample
            out.append(latents)
        return torch.cat(out)
