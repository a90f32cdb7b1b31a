"""GPU figure: RAZOR on the full Stable Diffusion 1.5 architecture, next to the paper's 78 s / 4.2 GB.

    python -m benchmarks.gpu_sd15 --json out/gpu_sd15.json                           # CUDA, fp16, 512²
    .venv/bin/python -m benchmarks.gpu_sd15 --tiny --device cpu --json out/t.json    # same code path, toy size
    .venv/bin/python -m benchmarks.gpu_sd15 --device cpu --latent-size 8 --json out/c.json  # full width, CPU memory

On the lent GPU machine (its Python has torch and transformers, not diffusers), carry diffusers as wheels: here,
`python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
--platform manylinux_2_28_x86_64 -d .whl diffusers==0.42.1 importlib_metadata` (with `/.whl/` in
.git/info/exclude), then run with `.whl` carried: `python3 -m pip install -q --no-index --no-deps --target /tmp/site
.whl/*.whl && PYTHONPATH=/tmp/site:. python3 -m benchmarks.gpu_sd15 --json $OUT/gpu_sd15.json`, and once more with
`--micro-batch 1 --validation-batch 8 --json $OUT/gpu_sd15_lean.json` (activations of one sample at a time).

Builds SD1.5's UNet (diffusers `UNet2DConditionModel`) and CLIP ViT-L/14's text encoder (transformers
`CLIPTextModel`) from their published configurations with random weights: the time and memory of a run do not
depend on the values. The tokenizer is MiniCanvas's (CLIP's file format, padded to SD1.5's 77 tokens), since no
machine here can download CLIP's vocabulary; the ids it produces are valid CLIP-L ids. RAZOR then forgets one style
with the node's default prompts (3 forget, 3 retain), self-generating its images at 512² (64² latents, 20 DDIM steps,
cfg 7.5), as the Grow Edit Set node does. `seconds` counts the same work as benchmarks.compare's: from the forget set
to the edit, self-generated images included. Peak memory is the accelerator's (CPU: the process's peak RSS); the
inference peak is one batch of 8 latents drawn with the same sampler. The JSON records the batch sizes the run
ended with (they halve when a batch runs out of memory).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save

from razor_core import growth
from razor_core.adapters.diffusers import DiffusersText2Image
from razor_core.forget_set import from_text
from razor_core.minicanvas.pipeline import tokenizer_dir
from razor_core.minicanvas.store import atomic_write_bytes
from razor_core.objectives.diffusion import DiffusionObjective, DiffusionSettings

PAPER = {"seconds": 78.0, "peak_gb": 4.2, "edit_gb": 0.06}  # RAZOR on SD1.5 as the paper reports it
SD15_UNET = {"sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
             "block_out_channels": (320, 640, 1280, 1280), "cross_attention_dim": 768, "attention_head_dim": 8,
             "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
             "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3}
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
          "vocab_size": 49408, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "projection_dim": 768}
TINY_UNET = {"sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
             "block_out_channels": (32, 64), "cross_attention_dim": 32, "attention_head_dim": 4, "norm_num_groups": 8,
             "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
             "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D")}
TINY_CLIP = {**CLIP_L, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "projection_dim": 32}
SD15_SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False,
                  "steps_offset": 1}
# The Load Forget Set node's defaults, with a concept.
FORGET_PROMPTS = "a painting in {concept} style\na portrait in {concept} style\na landscape in {concept} style"
RETAIN_PROMPTS = "a painting in impressionist style\na portrait in cubist style\na landscape photo"


def build(tiny: bool, device: str, dtype: torch.dtype, latent_size: int | None = None) -> DiffusersText2Image:
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    config = {**(TINY_UNET if tiny else SD15_UNET), **({"sample_size": latent_size} if latent_size else {})}
    unet = UNet2DConditionModel(**config).to(device, dtype).eval()
    text_encoder = CLIPTextModel(CLIPTextConfig(**(TINY_CLIP if tiny else CLIP_L))).to(device, dtype).eval()
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir()), model_max_length=CLIP_L["max_position_embeddings"])
    return DiffusersText2Image(unet, text_encoder, tokenizer, DDIMScheduler(**SD15_SCHEDULER),
                               sample_steps=4 if tiny else 20, latent_size=unet.config.sample_size)


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_gb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(tiny: bool, device: str, dtype: torch.dtype, concept: str = "Van Gogh",
            latent_size: int | None = None, settings: DiffusionSettings = DiffusionSettings()) -> dict:
    adapter = build(tiny, device, dtype, latent_size)
    model_bytes = sum(p.numel() * p.element_size() for p in adapter.parameters())
    _synchronize(device)
    start = time.time()
    adapter.sample([FORGET_PROMPTS.splitlines()[1].format(concept=concept)] * 8, list(range(8)))
    _synchronize(device)
    inference = {"seconds": time.time() - start, "peak_gb": _peak_gb(device)}
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    forget_set = from_text(concept, "style", FORGET_PROMPTS, "generic", RETAIN_PROMPTS)
    start = time.time()
    objective = DiffusionObjective(adapter, forget_set, settings)
    _synchronize(device)
    generated = time.time() - start
    result = growth.run(objective, growth.RazorConfig(), progress=lambda r, n, msg: print(msg, file=sys.stderr))
    _synchronize(device)
    seconds = time.time() - start
    return {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "dtype": str(dtype).removeprefix("torch."), "architecture": "tiny" if tiny else "SD1.5 UNet + CLIP ViT-L/14",
        "seconds": round(seconds, 2), "self_generation_seconds": round(generated, 2),
        "peak_gb": round(_peak_gb(device), 3), "inference": {k: round(v, 3) for k, v in inference.items()},
        "latent_size": adapter.latent_size, "model_gb": round(model_bytes / 2**30, 3),
        "edit_gb": round(len(save({k: v.contiguous().cpu() for k, v in result.delta.items()})) / 2**30, 6),
        "rounds": len(result.rounds), "units": [u.name for u in result.units],
        "micro_batch": objective.micro_batch, "validation_batch": objective.validation_batch,  # after any halving
        "backward_passes": result.backward_passes, "forget_progress": round(result.rounds[-1].forget_progress, 4),
        "retain_drift": round(result.rounds[-1].retain_drift, 4), "paper": PAPER,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a toy UNet and text encoder (the test of this script)")
    parser.add_argument("--device", default="cuda", help="torch device (default: cuda)")
    parser.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16")
    parser.add_argument("--latent-size", type=int, help="latent side (default: the architecture's, 64 for SD1.5 = "
                        "512² images); a CPU can measure memory at full width with a small one, e.g. 8")
    parser.add_argument("--micro-batch", type=int, default=DiffusionSettings.micro_batch,
                        help="samples per gradient micro-batch, at most (activations kept for backward)")
    parser.add_argument("--validation-batch", type=int, default=DiffusionSettings.validation_batch,
                        help="samples per no-grad batch of the validation probes, at most")
    parser.add_argument("--json", type=Path, required=True, help="where to write the figures")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here: this figure needs a GPU (use --tiny --device cpu to check the script)")
    settings = DiffusionSettings(micro_batch=args.micro_batch, validation_batch=args.validation_batch)
    row = measure(args.tiny, args.device, getattr(torch, args.dtype), latent_size=args.latent_size, settings=settings)
    atomic_write_bytes(args.json, (json.dumps(row, indent=1) + "\n").encode())
    print("| | seconds | peak GB | edit GB |\n|---|---|---|---|")
    print(f"| this run ({row['device']}, {row['dtype']}) | {row['seconds']:.1f} | {row['peak_gb']:.2f} | "
          f"{row['edit_gb']:.3f} |")
    print(f"| paper (SD1.5) | {PAPER['seconds']:.0f} | {PAPER['peak_gb']} | {PAPER['edit_gb']} |")
    return row


if __name__ == "__main__":
    main()
