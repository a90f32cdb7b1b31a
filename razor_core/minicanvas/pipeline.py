"""MiniCanvas text-to-image pipeline: tokenizer -> CLIP text encoder -> MiniDiT, sampled with rectified-flow Euler.

Plain torch modules, usable from razor_core without ComfyUI. The same weights load into ComfyUI as MODEL/CLIP/VAE
(pixel-space VAE, flow model sampling with shift 1), where stock KSampler with `euler` reproduces this sampler.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import store, text
from .classifier import ConceptClassifier
from .denoiser import MiniDiT

TIMESTEP_MULTIPLIER = 1000.0  # the network sees t * 1000, as ComfyUI's flow model sampling passes it
DEFAULT_STEPS = 20
DEFAULT_CFG = 4.0


@dataclass
class MiniCanvasPipeline:
    tokenizer: object
    text_encoder: torch.nn.Module
    denoiser: MiniDiT

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Per-token text features (B, CONTEXT_LENGTH, 128): the last layer after the final norm, as SD uses."""
        ids = text.tokenize(self.tokenizer, prompts)
        return self.text_encoder(input_ids=ids).last_hidden_state

    def velocity(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.denoiser(x, t * TIMESTEP_MULTIPLIER, context)

    @torch.no_grad()
    def sample(self, prompts: list[str], seeds: list[int], steps: int = DEFAULT_STEPS, cfg: float = DEFAULT_CFG,
               batch_size: int = 128) -> torch.Tensor:
        """Images (N, 3, 32, 32) in [-1, 1]; each image's starting noise depends only on its seed."""
        if len(prompts) != len(seeds):
            raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; pass one seed per prompt")
        out = []
        uncond = self.encode([""])
        for start in range(0, len(prompts), batch_size):
            chunk, chunk_seeds = prompts[start:start + batch_size], seeds[start:start + batch_size]
            cond = self.encode(chunk)
            x = torch.stack([torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(s)) for s in chunk_seeds])
            out.append(euler_sample(self.velocity, x, cond, uncond.expand_as(cond), steps, cfg))
        return torch.cat(out)


def euler_sample(velocity, noise: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, steps: int,
                 cfg: float) -> torch.Tensor:
    """Integrate dx/dt = v from t=1 (noise) to t=0 with classifier-free guidance."""
    ts = torch.linspace(1.0, 0.0, steps + 1)
    x = noise
    both = torch.cat([cond, uncond])
    for i in range(steps):
        t = torch.full((x.shape[0] * 2,), float(ts[i]))
        v_cond, v_uncond = velocity(torch.cat([x, x]), t, both).chunk(2)
        v = v_uncond + cfg * (v_cond - v_uncond)
        x = x + (ts[i + 1] - ts[i]) * v
    return x


def load_pipeline(weights_dir=store.WEIGHTS_DIR) -> MiniCanvasPipeline:
    tokenizer = text.load_tokenizer(tokenizer_dir(weights_dir))
    text_encoder = text.build_text_encoder(tokenizer)
    text_encoder.load_state_dict(store.load_tensors("text_encoder.safetensors", weights_dir))
    denoiser = MiniDiT(**store.file_config("denoiser.safetensors", weights_dir))
    denoiser.load_state_dict(store.load_tensors("denoiser.safetensors", weights_dir))
    return MiniCanvasPipeline(tokenizer, text_encoder.eval(), denoiser.eval())


def tokenizer_dir(weights_dir=store.WEIGHTS_DIR):
    for name in ("vocab.json", "merges.txt"):
        store.verified_path(f"tokenizer/{name}", weights_dir)
    return weights_dir / "tokenizer"


def load_classifier(domain: str, weights_dir=store.WEIGHTS_DIR) -> ConceptClassifier:
    name = f"{domain}_classifier.safetensors"
    model = ConceptClassifier(**store.file_config(name, weights_dir))
    model.load_state_dict(store.load_tensors(name, weights_dir))
    return model.eval()


def load_clip(weights_dir=store.WEIGHTS_DIR):
    tokenizer = text.load_tokenizer(tokenizer_dir(weights_dir))
    model = text.build_clip(tokenizer)
    model.load_state_dict(store.load_tensors("clip.safetensors", weights_dir))
    return model.eval(), tokenizer
