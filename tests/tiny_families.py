"""Tiny random files of the families that ComfyUI users load with separate loaders (Load Diffusion Model, Load CLIP,
Load VAE) or as SDXL checkpoints, written at test time and never committed. Their key names and shapes come from
ComfyUI's own model classes, built on the meta device from the configuration its detection
(comfy/model_detection.py) reads back from those shapes, so every file is detected as its family by the stock
loaders.

What detection fixes and what is shrunk:
- Flux-dev and Chroma: 24 heads of 128 (hidden width 3072) are fixed, so the blocks are full width; one double-stream
  and one single-stream block instead of 19 + 38 (Flux-dev here: 535 M parameters; Chroma: its 5-layer, 5120-wide
  guidance approximator is fixed too). `txt_in` reads CLIP-L's 768-wide hidden states instead of T5-XXL's 4096-wide
  ones, and Flux's `vector_in` CLIP-L's pooled vector as in Flux itself: T5-XXL's configuration is fixed at 4.7 B
  parameters, more than a CPU test can hold. Detection reads both widths from the file.
- Lumina 2: the original width (2304: 24 query heads, 8 key/value heads of 96) is the one detection completes;
  one main layer and the two refiner layers of each stream. The caption embedder reads CLIP-L (768) instead of
  Gemma-2-2B (2304).
- Wan 2.1: every width is read from the file; 1 head of 128, one block, a 256-wide MLP. Its text embedding's input
  width is fixed at 4096, so it reads CLIP-L through ComfyUI's SD3 text encoder (CLIP-L padded with zeros to 4096)
  instead of UMT5-XXL. The VAE is Wan 2.1's own, 32 channels wide instead of 96 (the loader reads the width).
- SDXL: detection matches the UNet's transformer depths against its list exactly; the smallest SDXL-class entry is
  KOALA-700M (three levels, transformer depths 0, 2, 5), with SDXL's own CLIP-L and CLIP-G (fixed: 817 M
  parameters together) and VAE, in one checkpoint as `sd_xl_base_1.0.safetensors` is laid out.

Values follow tests/tiny_checkpoints.py: norm scales 1, biases 0, matrices normal with std 0.5/sqrt(fan_in) (CLIP:
0.02), float16, fully determined by the seed.
"""
from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.comfy_server import ensure_comfyui_installed
from tests.tiny_checkpoints import clip_shapes, vae_shapes

CLIP_L_WIDTH = 768
FLUX_WIDTH = 3072


@dataclass(frozen=True)
class Family:
    model_class: str         # in comfy.supported_models
    config: dict             # what detection reads back from the shapes
    clip_type: str           # Load CLIP's `type` for a CLIP-L file (it has none named flux: a lone CLIP-L is SD's)
    latent_node: str         # the empty-latent node the family samples from
    vae: str                 # "flux" (AutoencoderKL, 16 channels) or "wan"


FAMILIES = {
    "flux_dev": Family("Flux", dict(
        image_model="flux", in_channels=16, out_channels=16, vec_in_dim=CLIP_L_WIDTH, context_in_dim=CLIP_L_WIDTH,
        hidden_size=FLUX_WIDTH, mlp_ratio=4.0, num_heads=24, depth=1, depth_single_blocks=1, axes_dim=[16, 56, 56],
        theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True),
        "stable_diffusion", "EmptySD3LatentImage", "flux"),
    "chroma": Family("Chroma", dict(
        image_model="chroma", in_channels=64, out_channels=64, context_in_dim=CLIP_L_WIDTH, hidden_size=FLUX_WIDTH,
        mlp_ratio=4.0, num_heads=24, depth=1, depth_single_blocks=1, axes_dim=[16, 56, 56], theta=10000, patch_size=2,
        qkv_bias=True, in_dim=64, out_dim=FLUX_WIDTH, hidden_dim=5120, n_layers=5), "chroma", "EmptySD3LatentImage",
        "flux"),
    "lumina2": Family("Lumina2", dict(
        image_model="lumina2", patch_size=2, in_channels=16, dim=2304, cap_feat_dim=CLIP_L_WIDTH, n_layers=1,
        qk_norm=True, n_heads=24, n_kv_heads=8, axes_dims=[32, 32, 32], axes_lens=[300, 512, 512], rope_theta=10000.0,
        ffn_dim_multiplier=4.0), "lumina2", "EmptySD3LatentImage", "flux"),
    "wan": Family("WAN21_T2V", dict(
        image_model="wan2.1", model_type="t2v", dim=128, out_dim=16, num_heads=1, ffn_dim=256, num_layers=1,
        patch_size=(1, 2, 2), freq_dim=256, window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6,
        in_dim=16), "sd3", "EmptyHunyuanLatentVideo", "wan"),
}
SDXL_CLASS = "KOALA_700M"
# The UNet configurations detection reads back (beyond each class's own `unet_config`): KOALA-700M's three levels of
# one res block each, and SDXL base's (three levels of two, 10 transformer blocks at the lowest; 2.57 B parameters).
SDXL_UNETS = {
    "KOALA_700M": dict(num_res_blocks=[1, 1, 1], transformer_depth_output=[0, 0, 2, 2, 5, 5],
                       transformer_depth_middle=-2),
    "SDXL": dict(num_res_blocks=[2, 2, 2], transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
                 transformer_depth_middle=10),
}


@contextmanager
def _comfy():
    """ComfyUI's modules, on the CPU; its folder leaves sys.path again afterwards (the pack's entry point, imported
    by other tests, must not find ComfyUI)."""
    path = str(ensure_comfyui_installed())
    sys.path.insert(0, path)
    try:
        import comfy.cli_args
        comfy.cli_args.args.cpu = True
        import comfy.ldm.wan.vae
        import comfy.supported_models
        yield comfy
    finally:
        sys.path.remove(path)


def _meta_shapes(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def diffusion_model_shapes(family: str, **overrides) -> dict[str, tuple[int, ...]]:
    """The diffusion model's keys (as Load Diffusion Model files store them: no prefix) and shapes; `overrides`
    change the configuration (e.g. Flux's `depth`, for benchmarks)."""
    spec = FAMILIES[family]
    with _comfy() as comfy, torch.device("meta"):
        model = getattr(comfy.supported_models, spec.model_class)(dict(spec.config, **overrides)).get_model(
            {}, device="meta")
    return _meta_shapes(model.diffusion_model)


def sdxl_checkpoint_shapes(model_class: str = SDXL_CLASS) -> dict[str, tuple[int, ...]]:
    """A whole SDXL-class checkpoint (UNet, CLIP-L + CLIP-G, VAE) under the keys ComfyUI saves it with;
    `model_class` "SDXL" is SDXL base at full size (benchmarks only)."""
    with _comfy() as comfy, torch.device("meta"):
        model_class = getattr(comfy.supported_models, model_class)
        config = dict(model_class.unet_config, **SDXL_UNETS[model_class.__name__], in_channels=4, out_channels=4,
                      channel_mult=[1, 2, 4], num_head_channels=64, use_spatial_transformer=True,
                      num_classes="sequential", legacy=False, image_size=32)
        model_config = model_class(config)
        model = model_config.get_model({}, device="meta")
        clip = model_config.clip_target().clip(device="meta")
    clip_sd = {k: torch.empty(s, device="meta") for k, s in _meta_shapes(clip).items()
               if "position_ids" not in k and "logit_scale" not in k}
    vae_sd = {k.removeprefix("first_stage_model."): torch.empty(s, device="meta") for k, s in vae_shapes().items()}
    saved = model.state_dict_for_saving(clip_sd, vae_sd)
    return {k: tuple(v.shape) for k, v in saved.items()}


def wan_vae_shapes() -> dict[str, tuple[int, ...]]:
    """Wan 2.1's VAE as ComfyUI's VAE loader builds it (16 latent channels), at 32 base channels instead of 96: the
    loader reads that width from the file."""
    with _comfy() as comfy, torch.device("meta"):
        return _meta_shapes(comfy.ldm.wan.vae.WanVAE(dim=32, z_dim=16, temperal_downsample=[False, True, True]))


def _values(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, shape in shapes.items():
        leaf = key.rsplit(".", 1)[-1]
        if leaf in ("scale", "gamma") or (len(shape) == 1 and leaf == "weight"):  # a norm's scale (Wan's: C,1,1)
            value = torch.ones(shape)
        elif len(shape) == 1 or leaf == "bias":
            value = torch.zeros(shape)
        else:
            std = 0.02 if "text_model." in key or "model.transformer." in key else 0.5 / math.sqrt(math.prod(shape[1:]))
            value = torch.randn(shape, generator=gen).mul_(std)
        tensors[key] = value.to(torch.float16)
    return tensors


def _save(tensors: dict[str, torch.Tensor], path: Path, what: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt", "note": f"tiny random {what} (comfyui-razor tests)"})
    return path


def write_family_files(family: str, diffusion_model: Path, clip_l: Path, vae: Path, seed: int = 0,
                       **overrides) -> None:
    """The diffusion model, a CLIP-L text encoder and the family's VAE, each where its stock loader looks."""
    _save(_values(diffusion_model_shapes(family, **overrides), seed), diffusion_model, f"{family} diffusion model")
    _save(_values(clip_shapes("text_model."), seed + 1), clip_l, "CLIP-L")
    vae_keys = wan_vae_shapes() if FAMILIES[family].vae == "wan" else {
        k.removeprefix("first_stage_model."): s for k, s in vae_shapes(16, quant_convs=False).items()}
    _save(_values(vae_keys, seed + 2), vae, f"{FAMILIES[family].vae} VAE")


def write_sdxl_checkpoint(path: Path, seed: int = 0, model_class: str = SDXL_CLASS) -> Path:
    return _save(_values(sdxl_checkpoint_shapes(model_class), seed), path, f"{model_class} (SDXL class) checkpoint")
