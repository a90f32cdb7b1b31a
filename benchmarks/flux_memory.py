"""Flux-dev's memory while RAZOR computes gradients, extrapolated from its full-width blocks measured on the CPU.

    .venv/bin/python -m benchmarks.flux_memory --json out/flux_memory.json

No machine here holds Flux-dev (12 B parameters), so the estimate is built from parts, each measured or counted:
- weights: Flux-dev's parameters, counted on ComfyUI's own Flux class built on the meta device (19 double-stream and
  38 single-stream blocks, T5-XXL's 4096-wide `txt_in`), at 1 byte (fp8 `weight_dtype`) or 2 (bf16);
- activations: one full-width double-stream and one single-stream block (ComfyUI's classes, bf16, PyTorch's
  scaled-dot-product attention as ComfyUI uses on NVIDIA GPUs) run forward with gradients at two token counts; the
  bytes autograd keeps for the backward pass (beyond the weights) are fitted as a + b x tokens per block and taken
  at 1024² (4096 image tokens and T5's 512 text tokens), one sample per micro-batch, with RAZOR's block
  checkpointing (`adapters.comfy.checkpointed_blocks`: each block keeps its inputs, one block at a time is
  recomputed) and without it;
- scoring gradients: the nodes' gradient budget (a quarter of the weights' bytes, float8 leaves included);
- per edited block: while the step search probes, RAZOR holds Δ, θ⁰ + Δ, the probed step and the probed weights in
  float32 for every tensor its edit touches (16 bytes a parameter), and the step's preconditioner a float32 d x d
  input moment per stepped projection (d = its input width).
T5-XXL and the VAE are left out: ComfyUI moves them off the GPU once the prompts are encoded and while the
denoiser runs.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

from razor_core.growth import budget_for_weights
from razor_core.minicanvas.store import atomic_write_bytes
from tests.comfy_server import ensure_comfyui_installed
from tests.saved_tensors import saved_tensor_bytes
from tests.tiny_families import FLUX_WIDTH, diffusion_model_shapes

HEADS, MLP_RATIO = 24, 4.0
DEPTH, DEPTH_SINGLE = 19, 38
IMAGE_TOKENS, TEXT_TOKENS = 4096, 512  # 1024² latents in 2x2 patches; ComfyUI pads T5-XXL to 512 tokens for Flux
MEASURED_TOKENS = ((64, 16), (256, 64))  # (image, text) tokens per measurement
PROBE_BYTES = 16  # an edited tensor's parameter during a probe: Δ, θ⁰ + Δ, the step, the probed weights
GB = 2 ** 30


def comfy_flux_layers():
    """ComfyUI's Flux layers, attention through PyTorch's SDPA (ComfyUI's choice on NVIDIA GPUs)."""
    sys.path.insert(0, str(ensure_comfyui_installed()))
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    comfy.cli_args.args.use_pytorch_cross_attention = True
    import comfy.ldm.flux.layers
    import comfy.ldm.modules.attention
    import comfy.ops
    chosen = comfy.ldm.modules.attention.optimized_attention
    if chosen is not comfy.ldm.modules.attention.attention_pytorch:  # chosen once, when ComfyUI is first imported
        raise RuntimeError(f"ComfyUI's attention is {chosen.__name__}, not attention_pytorch: import this module's "
                           "ComfyUI layers before anything else imports ComfyUI")
    return comfy.ldm.flux.layers, comfy.ops.disable_weight_init


class Blocks(nn.Module):
    """One double-stream and one single-stream block in block lists, as in Flux."""

    def __init__(self, layers, ops):
        super().__init__()
        kwargs = dict(dtype=torch.bfloat16, operations=ops)
        self.double_blocks = nn.ModuleList([layers.DoubleStreamBlock(FLUX_WIDTH, HEADS, mlp_ratio=MLP_RATIO,
                                                                     qkv_bias=True, **kwargs)])
        self.single_blocks = nn.ModuleList([layers.SingleStreamBlock(FLUX_WIDTH, HEADS, mlp_ratio=MLP_RATIO,
                                                                     **kwargs)])


def kept_bytes(run, weights: list[torch.Tensor]) -> int:
    """Bytes autograd keeps for backward while `run()` runs, weights not counted."""
    with torch.enable_grad(), saved_tensor_bytes(weights) as kept:
        run()
    return kept[0]


def block_activations() -> dict[str, dict[str, float]]:
    """Per block kind and mode: bytes kept = a + b x tokens (fitted on MEASURED_TOKENS)."""
    from razor_core.adapters.comfy import checkpointed_blocks, norm_inputs_copied
    layers, ops = comfy_flux_layers()
    torch.manual_seed(0)
    blocks = Blocks(layers, ops)
    with torch.no_grad():
        for p in blocks.parameters():
            p.copy_(torch.randn(p.shape) * 0.02)
    blocks.requires_grad_(True)
    weights = list(blocks.parameters())
    positions = layers.EmbedND(dim=FLUX_WIDTH // HEADS, theta=10000, axes_dim=[16, 56, 56])
    measured: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for image, text in MEASURED_TOKENS:
        tokens = image + text
        pe = positions(torch.zeros(1, tokens, 3))
        img, txt, x = (torch.randn(1, n, FLUX_WIDTH, dtype=torch.bfloat16) for n in (image, text, tokens))
        vec = torch.randn(1, FLUX_WIDTH, dtype=torch.bfloat16)
        runs = {"double": lambda: blocks.double_blocks[0](img=img.clone(), txt=txt.clone(), vec=vec, pe=pe),
                "single": lambda: blocks.single_blocks[0](x.clone(), vec=vec, pe=pe)}
        for mode in ("kept", "checkpointed"):
            for kind, run in runs.items():
                with norm_inputs_copied(blocks):
                    if mode == "checkpointed":  # the checkpoint holds the block's hidden-state inputs itself
                        with checkpointed_blocks(blocks):
                            size = kept_bytes(run, weights) + tokens * FLUX_WIDTH * 2
                    else:
                        size = kept_bytes(run, weights)
                measured.setdefault((kind, mode), []).append((tokens, size))
    fits = {}
    for (kind, mode), ((n1, s1), (n2, s2)) in measured.items():
        per_token = (s2 - s1) / (n2 - n1)
        fits.setdefault(kind, {})[mode] = {"bytes_per_token": per_token, "bytes_fixed": s1 - per_token * n1,
                                           "measured": [[n1, s1], [n2, s2]]}
    return fits


def parameter_counts() -> dict[str, int]:
    shapes = diffusion_model_shapes("flux_dev", depth=DEPTH, depth_single_blocks=DEPTH_SINGLE, context_in_dim=4096)

    def count(prefix: str) -> int:
        return sum(torch.Size(s).numel() for k, s in shapes.items() if k.startswith(prefix))
    return {"total": count(""), "double_block": count("double_blocks.0."), "single_block": count("single_blocks.0.")}


def estimate(counts: dict[str, int], fits: dict, weight_bytes: int) -> dict[str, float]:
    tokens = IMAGE_TOKENS + TEXT_TOKENS

    def at(kind: str, mode: str) -> float:
        fit = fits[kind][mode]
        return fit["bytes_fixed"] + fit["bytes_per_token"] * tokens
    kept = DEPTH * at("double", "kept") + DEPTH_SINGLE * at("single", "kept")
    checkpointed = (DEPTH * at("double", "checkpointed") + DEPTH_SINGLE * at("single", "checkpointed")
                    + max(at("double", "kept"), at("single", "kept")))  # the block being recomputed
    weights = counts["total"] * weight_bytes
    budget = budget_for_weights(weights) * GB
    hidden, mlp = FLUX_WIDTH, int(FLUX_WIDTH * MLP_RATIO)
    # input moments of a block's projections: double: qkv and proj of both streams (3072), both MLPs' in (3072) and
    # out (12288); single: linear1 (3072) and linear2 (3072 + 12288)
    moments = {"double_block": 4 * (6 * hidden ** 2 + 2 * mlp ** 2),
               "single_block": 4 * (hidden ** 2 + (hidden + mlp) ** 2)}
    base = weights + checkpointed + budget
    return {"weights_gb": weights / GB, "activations_kept_gb": kept / GB,
            "activations_checkpointed_gb": checkpointed / GB, "scoring_budget_gb": budget / GB,
            "total_before_edit_gb": base / GB,
            "per_edited_double_block_gb": (PROBE_BYTES * counts["double_block"] + moments["double_block"]) / GB,
            "per_edited_single_block_gb": (PROBE_BYTES * counts["single_block"] + moments["single_block"]) / GB}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    fits = block_activations()  # first: it sets ComfyUI's attention before ComfyUI is imported
    counts = parameter_counts()
    results = {"parameters": counts, "blocks": fits, "tokens_at_1024": IMAGE_TOKENS + TEXT_TOKENS,
               "estimates": {name: estimate(counts, fits, size) for name, size in (("fp8", 1), ("bf16", 2))}}
    atomic_write_bytes(args.json, (json.dumps(results, indent=1) + "\n").encode())
    print(f"Flux-dev: {counts['total'] / 1e9:.2f} B parameters (double block {counts['double_block'] / 1e6:.0f} M, "
          f"single block {counts['single_block'] / 1e6:.0f} M); activations per sample at 1024² "
          f"({IMAGE_TOKENS + TEXT_TOKENS} tokens), bf16")
    for kind, modes in fits.items():
        print(f"  {kind} block: {modes['kept']['bytes_per_token'] / 1024:.0f} KiB a token kept, "
              f"{modes['checkpointed']['bytes_per_token'] / 1024:.0f} KiB a token checkpointed")
    print("| weights | weights GB | activations GB (kept / checkpointed) | scoring budget GB | total GB | "
          "per edited double / single block GB |")
    print("|---|---|---|---|---|---|")
    for name, e in results["estimates"].items():
        print(f"| {name} | {e['weights_gb']:.1f} | {e['activations_kept_gb']:.1f} / "
              f"{e['activations_checkpointed_gb']:.1f} | {e['scoring_budget_gb']:.1f} | "
              f"{e['total_before_edit_gb']:.1f} | "
              f"{e['per_edited_double_block_gb']:.2f} / {e['per_edited_single_block_gb']:.2f} |")


if __name__ == "__main__":
    main()
