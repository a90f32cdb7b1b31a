"""MiniDiT: the MiniCanvas text-to-image denoiser, a small pixel-space diffusion transformer.

Rectified flow in ComfyUI's CONST parameterisation: x_t = (1 - t) x0 + t noise, the network predicts the velocity
noise - x0, and receives the timestep as t * 1000 (ComfyUI's `ModelSamplingDiscreteFlow` with multiplier 1000).
Text enters only through cross-attention (`attn2`), as in SD1.5, so the concept's path runs through the heads that
RAZOR scores. The constructor takes `operations` (default `torch.nn`), so ComfyUI can build it with `comfy.ops`.

Attention modules name their projections `to_q`, `to_k`, `to_v`, `to_out` like ComfyUI's CrossAttention; head h owns
rows h*dim_head:(h+1)*dim_head of q/k/v and the same columns of `to_out`.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_CONFIG: dict[str, Any] = {
    "image_size": 32,
    "in_channels": 3,
    "patch_size": 4,
    "width": 128,
    "depth": 6,
    "heads": 4,
    "mlp_ratio": 4,
    "context_dim": 128,
    "refine_channels": 32,
}


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class Attention(nn.Module):
    """Multi-head attention; cross-attention when `context_dim` differs from `dim` or context is given."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, operations: Any = nn,
                 device=None, dtype=None):
        super().__init__()
        context_dim = context_dim or dim
        self.heads = heads
        self.dim_head = dim // heads
        self.to_q = operations.Linear(dim, dim, bias=True, device=device, dtype=dtype)
        self.to_k = operations.Linear(context_dim, dim, bias=True, device=device, dtype=dtype)
        self.to_v = operations.Linear(context_dim, dim, bias=True, device=device, dtype=dtype)
        self.to_out = operations.Linear(dim, dim, bias=True, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, n, _ = x.shape
        q = self.to_q(x).view(b, n, self.heads, self.dim_head).transpose(1, 2)
        k = self.to_k(context).view(b, context.shape[1], self.heads, self.dim_head).transpose(1, 2)
        v = self.to_v(context).view(b, context.shape[1], self.heads, self.dim_head).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class DiTBlock(nn.Module):
    """Self-attention and MLP modulated by the timestep (adaLN-zero), cross-attention to the text in between."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, context_dim: int, operations: Any = nn,
                 device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.norm1 = operations.LayerNorm(width, elementwise_affine=False, eps=1e-6, **kw)
        self.attn1 = Attention(width, heads, operations=operations, **kw)
        self.norm2 = operations.LayerNorm(width, elementwise_affine=True, eps=1e-6, **kw)
        self.attn2 = Attention(width, heads, context_dim=context_dim, operations=operations, **kw)
        self.norm3 = operations.LayerNorm(width, elementwise_affine=False, eps=1e-6, **kw)
        self.ff = nn.Sequential(
            operations.Linear(width, width * mlp_ratio, **kw), nn.GELU(approximate="tanh"),
            operations.Linear(width * mlp_ratio, width, **kw),
        )
        self.adaLN = operations.Linear(width, 6 * width, **kw)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift3, scale3, gate3 = self.adaLN(F.silu(temb))[:, None].chunk(6, dim=-1)
        x = x + gate1 * self.attn1(self.norm1(x) * (1 + scale1) + shift1)
        x = x + self.attn2(self.norm2(x), context)
        return x + gate3 * self.ff(self.norm3(x) * (1 + scale3) + shift3)


class MiniDiT(nn.Module):
    def __init__(self, image_size: int = 32, in_channels: int = 3, patch_size: int = 4, width: int = 128,
                 depth: int = 6, heads: int = 4, mlp_ratio: int = 4, context_dim: int = 128,
                 refine_channels: int = 32, operations: Any = nn, device=None, dtype=None, **_ignored: Any):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.grid = image_size // patch_size
        self.refine_channels = refine_channels
        self.patch_embed = operations.Conv2d(in_channels, width, patch_size, stride=patch_size, **kw)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, width, **kw))
        self.time_embed = nn.Sequential(
            operations.Linear(256, width, **kw), nn.SiLU(), operations.Linear(width, width, **kw))
        self.blocks = nn.ModuleList(
            DiTBlock(width, heads, mlp_ratio, context_dim, operations=operations, **kw) for _ in range(depth))
        self.norm_out = operations.LayerNorm(width, elementwise_affine=False, eps=1e-6, **kw)
        self.adaLN_out = operations.Linear(width, 2 * width, **kw)
        self.proj_out = operations.Linear(width, patch_size * patch_size * refine_channels, **kw)
        # A conv after unpatchify smooths the seams between patches (seen as blocky corners without it).
        self.refine = operations.Conv2d(refine_channels, in_channels, 3, padding=1, **kw)

    def initialize_weights(self, generator: torch.Generator | None = None) -> None:
        """DiT initialisation: xavier linears, zeroed adaLN gates, small position embedding."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight, generator=generator)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.pos_embed, std=0.02, generator=generator)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN.weight)
            nn.init.zeros_(block.adaLN.bias)
        nn.init.zeros_(self.adaLN_out.weight)
        nn.init.zeros_(self.adaLN_out.bias)
        nn.init.zeros_(self.refine.weight)
        nn.init.zeros_(self.refine.bias)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, **_kwargs: Any) -> torch.Tensor:
        """Velocity prediction. x: (B, C, H, W); timesteps: (B,) = t * 1000; context: (B, L, context_dim)."""
        b = x.shape[0]
        h = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed.to(x.dtype)
        temb = self.time_embed(timestep_embedding(timesteps, 256).to(x.dtype))
        context = context.to(x.dtype)
        for block in self.blocks:
            h = block(h, temb, context)
        shift, scale = self.adaLN_out(F.silu(temb))[:, None].chunk(2, dim=-1)
        h = self.proj_out(self.norm_out(h) * (1 + scale) + shift)
        p, g, c = self.patch_size, self.grid, self.refine_channels
        h = h.view(b, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(b, c, g * p, g * p)
        return self.refine(F.silu(h))
