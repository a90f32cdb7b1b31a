"""Tiny checkpoints that ComfyUI's stock CheckpointLoaderSimple loads as Stable Diffusion 1.5 or as SD3 (written at
test time, never committed).

SD1.5: ComfyUI's model detection (comfy/model_detection.py) calls a UNet "SD1.5" when its first conv has 320
channels, its cross-attention keys read a 768-wide context, `proj_in` is a 1x1 conv and there is no `label_emb`; the
depth does not matter. So the denoiser here is SD1.5's UNet cut to one resolution level: input conv, one res block +
spatial transformer (depth 1), the middle block (res, transformer, res), two output res blocks with transformers, and
the output conv; 8 heads of 40 channels, GEGLU feed-forward, all with SD1.5's exact key names and shapes (25.8 M
parameters instead of 860 M).

SD3: an MMDiT is detected by `joint_blocks.0.context_block.attn.qkv.weight`; its depth is the patch embedding's width
/ 64 and every head is 64 wide, so depth 2 gives a 128-wide, 2-head MMDiT (2.3 M parameters) with SD3's key names:
joint blocks of a context and an image stream (fused qkv, proj, MLP, adaLN), the last context block "pre-only", a
4096-wide context embedder and a 2048-wide pooled-text embedder, a 16-channel latent. The text encoder is CLIP-L
alone (ComfyUI's SD3 CLIP pads it to the 4096-wide context and the 2048-wide pooled vector when CLIP-G and T5 are
absent), stored under `text_encoders.clip_l.`; the VAE is SD3's (16 latent channels, no quant convs).

The text encoder and the VAE cannot be shrunk: ComfyUI builds CLIP-L (12 layers, 768 wide, 49408 tokens) and the
VAE (AutoencoderKL, 128 channels x [1, 2, 4, 4]) from fixed configs, so the files hold full-size random ones.

Weights are random but sane, so sampling and gradients are finite and non-zero: norm weights 1 and biases 0, linear
and conv weights normal with std 0.5/sqrt(fan_in) (0.02 for CLIP's linears and token embedding, as CLIP's own
init; 0.01 for its position embedding). Everything is stored as float16, like the usual pruned files, and is fully
determined by the seed. The SD1.5 file is 465 MB (CLIP-L 246 MB, VAE 167 MB, UNet 52 MB), the SD3 one 418 MB;
writing one takes a few seconds and ComfyUI loads it in about 1 s on 2 CPU cores.

`sd15_full` is not tiny: SD1.5's whole UNet (859,520,964 parameters, SD1.5's exact count) with the same CLIP-L and
VAE, 2.0 GB, for benchmarks/comfy_memory.py; no test writes it.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import save_file

UNET = "model.diffusion_model."
CLIP = "cond_stage_model.transformer.text_model."          # SD1.5's CLIP-L
SD3_CLIP = "text_encoders.clip_l.transformer.text_model."   # SD3's CLIP-L
VAE = "first_stage_model."
CHANNELS, TIME_DIM, CONTEXT_DIM = 320, 1280, 768
MMDIT_DEPTH, MMDIT_PATCH, MMDIT_POS_SIDE = 2, 2, 32
SD3_LATENT, SD3_CONTEXT, SD3_POOLED = 16, 4096, 2048
CLIP_WIDTH, CLIP_LAYERS, CLIP_VOCAB, CLIP_POSITIONS = 768, 12, 49408, 77
VAE_CH, VAE_MULT, VAE_RES_BLOCKS = 128, (1, 2, 4, 4), 2

Shapes = dict[str, tuple[int, ...]]


# -------------------------------------------------------------------------------------------------------- UNet
def _norm(shapes: Shapes, prefix: str, width: int) -> None:
    shapes[f"{prefix}.weight"] = (width,)
    shapes[f"{prefix}.bias"] = (width,)


def _linear(shapes: Shapes, prefix: str, n_in: int, n_out: int, bias: bool = True) -> None:
    shapes[f"{prefix}.weight"] = (n_out, n_in)
    if bias:
        shapes[f"{prefix}.bias"] = (n_out,)


def _conv(shapes: Shapes, prefix: str, n_in: int, n_out: int, kernel: int) -> None:
    shapes[f"{prefix}.weight"] = (n_out, n_in, kernel, kernel)
    shapes[f"{prefix}.bias"] = (n_out,)


def _unet_res_block(shapes: Shapes, prefix: str, n_in: int, n_out: int) -> None:
    _norm(shapes, f"{prefix}.in_layers.0", n_in)
    _conv(shapes, f"{prefix}.in_layers.2", n_in, n_out, 3)
    _linear(shapes, f"{prefix}.emb_layers.1", TIME_DIM, n_out)
    _norm(shapes, f"{prefix}.out_layers.0", n_out)
    _conv(shapes, f"{prefix}.out_layers.3", n_out, n_out, 3)
    if n_in != n_out:
        _conv(shapes, f"{prefix}.skip_connection", n_in, n_out, 1)


def _unet_transformer(shapes: Shapes, prefix: str, width: int) -> None:
    """SpatialTransformer with one BasicTransformerBlock (self-attention, cross-attention, GEGLU feed-forward)."""
    _norm(shapes, f"{prefix}.norm", width)
    _conv(shapes, f"{prefix}.proj_in", width, width, 1)
    block = f"{prefix}.transformer_blocks.0"
    for attn, kv_in in (("attn1", width), ("attn2", CONTEXT_DIM)):
        _linear(shapes, f"{block}.{attn}.to_q", width, width, bias=False)
        _linear(shapes, f"{block}.{attn}.to_k", kv_in, width, bias=False)
        _linear(shapes, f"{block}.{attn}.to_v", kv_in, width, bias=False)
        _linear(shapes, f"{block}.{attn}.to_out.0", width, width)
    _linear(shapes, f"{block}.ff.net.0.proj", width, 8 * width)  # GEGLU: value and gate, 4 * width each
    _linear(shapes, f"{block}.ff.net.2", 4 * width, width)
    for n in (1, 2, 3):
        _norm(shapes, f"{block}.norm{n}", width)
    _conv(shapes, f"{prefix}.proj_out", width, width, 1)


def unet_shapes() -> Shapes:
    c = CHANNELS
    shapes: Shapes = {}
    _linear(shapes, "time_embed.0", c, TIME_DIM)
    _linear(shapes, "time_embed.2", TIME_DIM, TIME_DIM)
    _conv(shapes, "input_blocks.0.0", 4, c, 3)
    _unet_res_block(shapes, "input_blocks.1.0", c, c)
    _unet_transformer(shapes, "input_blocks.1.1", c)
    _unet_res_block(shapes, "middle_block.0", c, c)
    _unet_transformer(shapes, "middle_block.1", c)
    _unet_res_block(shapes, "middle_block.2", c, c)
    for i in (0, 1):  # each output block concatenates the matching input block's features (skip connection)
        _unet_res_block(shapes, f"output_blocks.{i}.0", 2 * c, c)
        _unet_transformer(shapes, f"output_blocks.{i}.1", c)
    _norm(shapes, "out.0", c)
    _conv(shapes, "out.2", c, 4, 3)
    return {UNET + k: v for k, v in shapes.items()}


def full_unet_shapes() -> Shapes:
    """SD1.5's whole UNet (860 M parameters): four levels of 320·(1, 2, 4, 4) channels, two res blocks per level, a
    transformer after each res block of the first three levels, stride-2 downsampling convs and upsampling convs."""
    shapes: Shapes = {}
    _linear(shapes, "time_embed.0", CHANNELS, TIME_DIM)
    _linear(shapes, "time_embed.2", TIME_DIM, TIME_DIM)
    _conv(shapes, "input_blocks.0.0", 4, CHANNELS, 3)
    widths = [CHANNELS * m for m in (1, 2, 4, 4)]
    skips, n_in, block = [CHANNELS], CHANNELS, 1
    for level, width in enumerate(widths):
        for _ in range(2):
            _unet_res_block(shapes, f"input_blocks.{block}.0", n_in, width)
            if level < 3:
                _unet_transformer(shapes, f"input_blocks.{block}.1", width)
            skips.append(n_in := width)
            block += 1
        if level < 3:
            _conv(shapes, f"input_blocks.{block}.0.op", width, width, 3)
            skips.append(width)
            block += 1
    _unet_res_block(shapes, "middle_block.0", n_in, n_in)
    _unet_transformer(shapes, "middle_block.1", n_in)
    _unet_res_block(shapes, "middle_block.2", n_in, n_in)
    block = 0
    for level in reversed(range(4)):
        for j in range(3):
            _unet_res_block(shapes, f"output_blocks.{block}.0", n_in + skips.pop(), widths[level])
            n_in, part = widths[level], 1
            if level < 3:
                _unet_transformer(shapes, f"output_blocks.{block}.1", n_in)
                part = 2
            if level > 0 and j == 2:
                _conv(shapes, f"output_blocks.{block}.{part}.conv", n_in, n_in, 3)
            block += 1
    _norm(shapes, "out.0", CHANNELS)
    _conv(shapes, "out.2", CHANNELS, 4, 3)
    return {UNET + k: v for k, v in shapes.items()}


# -------------------------------------------------------------------------------------------------------- MMDiT
def _mmdit_stream(shapes: Shapes, prefix: str, width: int, pre_only: bool) -> None:
    """One stream of a joint block; a pre-only block keeps just qkv and the shift/scale of its input."""
    _linear(shapes, f"{prefix}.attn.qkv", width, 3 * width)
    if not pre_only:
        _linear(shapes, f"{prefix}.attn.proj", width, width)
        _linear(shapes, f"{prefix}.mlp.fc1", width, 4 * width)
        _linear(shapes, f"{prefix}.mlp.fc2", 4 * width, width)
    _linear(shapes, f"{prefix}.adaLN_modulation.1", width, (2 if pre_only else 6) * width)


def mmdit_shapes() -> Shapes:
    width = 64 * MMDIT_DEPTH
    shapes: Shapes = {"pos_embed": (1, MMDIT_POS_SIDE ** 2, width)}
    _conv(shapes, "x_embedder.proj", SD3_LATENT, width, MMDIT_PATCH)
    _linear(shapes, "t_embedder.mlp.0", 256, width)
    _linear(shapes, "t_embedder.mlp.2", width, width)
    _linear(shapes, "y_embedder.mlp.0", SD3_POOLED, width)
    _linear(shapes, "y_embedder.mlp.2", width, width)
    _linear(shapes, "context_embedder", SD3_CONTEXT, width)
    for i in range(MMDIT_DEPTH):
        _mmdit_stream(shapes, f"joint_blocks.{i}.context_block", width, pre_only=i == MMDIT_DEPTH - 1)
        _mmdit_stream(shapes, f"joint_blocks.{i}.x_block", width, pre_only=False)
    _linear(shapes, "final_layer.linear", width, MMDIT_PATCH ** 2 * SD3_LATENT)
    _linear(shapes, "final_layer.adaLN_modulation.1", width, 2 * width)
    return {UNET + k: v for k, v in shapes.items()}


# -------------------------------------------------------------------------------------------------------- CLIP-L
def clip_shapes(prefix: str = CLIP) -> Shapes:
    w = CLIP_WIDTH
    shapes: Shapes = {"embeddings.token_embedding.weight": (CLIP_VOCAB, w),
                      "embeddings.position_embedding.weight": (CLIP_POSITIONS, w)}
    for i in range(CLIP_LAYERS):
        layer = f"encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            _linear(shapes, f"{layer}.self_attn.{proj}", w, w)
        _norm(shapes, f"{layer}.layer_norm1", w)
        _norm(shapes, f"{layer}.layer_norm2", w)
        _linear(shapes, f"{layer}.mlp.fc1", w, 4 * w)
        _linear(shapes, f"{layer}.mlp.fc2", 4 * w, w)
    _norm(shapes, "final_layer_norm", w)
    return {prefix + k: v for k, v in shapes.items()}


# -------------------------------------------------------------------------------------------------------- VAE
def _vae_res_block(shapes: Shapes, prefix: str, n_in: int, n_out: int) -> None:
    _norm(shapes, f"{prefix}.norm1", n_in)
    _conv(shapes, f"{prefix}.conv1", n_in, n_out, 3)
    _norm(shapes, f"{prefix}.norm2", n_out)
    _conv(shapes, f"{prefix}.conv2", n_out, n_out, 3)
    if n_in != n_out:
        _conv(shapes, f"{prefix}.nin_shortcut", n_in, n_out, 1)


def _vae_mid(shapes: Shapes, prefix: str, width: int) -> None:
    _vae_res_block(shapes, f"{prefix}.block_1", width, width)
    _norm(shapes, f"{prefix}.attn_1.norm", width)
    for name in ("q", "k", "v", "proj_out"):
        _conv(shapes, f"{prefix}.attn_1.{name}", width, width, 1)
    _vae_res_block(shapes, f"{prefix}.block_2", width, width)


def vae_shapes(latent_channels: int = 4, quant_convs: bool = True) -> Shapes:
    """SD's AutoencoderKL; SD3's has 16 latent channels and no quant convs."""
    shapes: Shapes = {}
    widths = [VAE_CH * m for m in VAE_MULT]
    _conv(shapes, "encoder.conv_in", 3, VAE_CH, 3)
    n_in = VAE_CH
    for level, width in enumerate(widths):
        for j in range(VAE_RES_BLOCKS):
            _vae_res_block(shapes, f"encoder.down.{level}.block.{j}", n_in, width)
            n_in = width
        if level < len(widths) - 1:
            _conv(shapes, f"encoder.down.{level}.downsample.conv", width, width, 3)
    _vae_mid(shapes, "encoder.mid", widths[-1])
    _norm(shapes, "encoder.norm_out", widths[-1])
    _conv(shapes, "encoder.conv_out", widths[-1], 2 * latent_channels, 3)  # mean and log-variance
    if quant_convs:
        _conv(shapes, "quant_conv", 2 * latent_channels, 2 * latent_channels, 1)
        _conv(shapes, "post_quant_conv", latent_channels, latent_channels, 1)
    _conv(shapes, "decoder.conv_in", latent_channels, widths[-1], 3)
    _vae_mid(shapes, "decoder.mid", widths[-1])
    n_in = widths[-1]
    for level in reversed(range(len(widths))):
        for j in range(VAE_RES_BLOCKS + 1):
            _vae_res_block(shapes, f"decoder.up.{level}.block.{j}", n_in, widths[level])
            n_in = widths[level]
        if level > 0:
            _conv(shapes, f"decoder.up.{level}.upsample.conv", n_in, n_in, 3)
    _norm(shapes, "decoder.norm_out", VAE_CH)
    _conv(shapes, "decoder.conv_out", VAE_CH, 3, 3)
    return {VAE + k: v for k, v in shapes.items()}


# -------------------------------------------------------------------------------------------------------- values
FAMILIES = {
    "sd15": lambda: {**unet_shapes(), **clip_shapes(CLIP), **vae_shapes()},
    "sd3": lambda: {**mmdit_shapes(), **clip_shapes(SD3_CLIP), **vae_shapes(SD3_LATENT, quant_convs=False)},
    "sd15_full": lambda: {**full_unet_shapes(), **clip_shapes(CLIP), **vae_shapes()},
}
TEXT_PREFIXES = {"sd15": CLIP, "sd3": SD3_CLIP}


def _std(key: str, shape: tuple[int, ...]) -> float:
    if ".text_model." in key:
        return 0.01 if "position_embedding" in key else 0.02
    fan_in = math.prod(shape[1:])
    return 0.5 / math.sqrt(fan_in)


def tiny_state_dict(family: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """The whole checkpoint of `family` ("sd15" or "sd3") as float16 tensors, deterministic in `seed`."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, shape in FAMILIES[family]().items():
        if len(shape) == 1:  # a 1-D weight is a norm's scale (1); every bias and norm shift is 0
            value = torch.ones(shape) if key.endswith(".weight") else torch.zeros(shape)
        else:
            value = torch.randn(shape, generator=gen).mul_(_std(key, shape))
        tensors[key] = value.to(torch.float16)
    return tensors


def write_tiny_checkpoint(family: str, path: Path, seed: int = 0) -> Path:
    """Write the checkpoint to `path` (a .safetensors file; parent folders are created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tiny_state_dict(family, seed), str(path), metadata={
        "format": "pt", "note": f"tiny random {family}-shaped test checkpoint (comfyui-razor tests)"})
    return path
