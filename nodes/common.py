"""What the node modules share: socket types, previews as IMAGE, ComfyUI sampling and model loading for razor_core."""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import comfy.model_management
import comfy.sample
import comfy.utils
import numpy as np
import torch
from comfy_api.latest import io

from ..razor_core.adapters.comfy import ComfyDiffusion
from ..razor_core.forget_set import ForgetSet
from ..razor_core.growth import Scoring, budget_for_weights
from ..razor_core.objectives.diffusion import DiffusionObjective

CATEGORY = "unlearning/razor"
FORGET_SET = io.Custom("FORGET_SET")
RAZOR_SCORES = io.Custom("RAZOR_SCORES")
RAZOR_EDIT = io.Custom("RAZOR_EDIT")


@dataclass
class ScoredModel:
    """RAZOR_SCORES: round 0 on one MODEL/CLIP (gradients, scores, and the data they came from, for GrowEditSet)."""
    objective: DiffusionObjective
    scoring: Scoring
    forget_set: ForgetSet
    models: tuple  # the MODEL and CLIP objects that were scored
    granularity: str
    blocks: str


def image_output(rgb: np.ndarray) -> torch.Tensor:
    """An (H, W, 3) uint8 array as a ComfyUI IMAGE batch of one."""
    return torch.from_numpy(rgb.astype(np.float32) / 255.0)[None]


def same_objects(first: tuple, second: tuple) -> bool:
    """True when two nodes received the very same MODEL/CLIP objects (a clone, a LoRA or any patch makes a new
    one, so the weights behind them are the same too)."""
    return len(first) == len(second) and all(a is b for a, b in zip(first, second))


def require_finite_inputs(**values: float) -> None:
    """Number inputs arrive unchecked as NaN or inf through the API (JSON allows them, and NaN passes min/max)."""
    for name, value in values.items():
        if not math.isfinite(value):
            raise ValueError(f"the input {name} is {value}: type a finite number")


def check_model_type(model: Any, clip: Any | None) -> None:
    if not hasattr(getattr(model, "model", None), "diffusion_model"):
        raise ValueError(f"the MODEL input is a {type(model).__name__}, not a ComfyUI diffusion MODEL: connect the "
                         "MODEL output of Load Checkpoint (or of Load MiniCanvas demo model)")
    if clip is not None and not hasattr(clip, "cond_stage_model"):
        raise ValueError(f"the CLIP input is a {type(clip).__name__}, not a ComfyUI CLIP: connect a CLIP output")


def load(model: Any, clip: Any | None) -> None:
    """Bring the patched weights into the modules (and onto the compute device) before reading them."""
    patchers = [model] + ([clip.patcher] if clip is not None else [])
    comfy.model_management.load_models_gpu(patchers, force_full_load=True)


@contextmanager
def gradients_allowed() -> Iterator[None]:
    """ComfyUI runs nodes under inference mode; RAZOR's gradients need ordinary tensors."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def comfy_sampler(model: Any, clip: Any, latent: dict, steps: int, cfg: float, sampler_name: str,
                  scheduler: str) -> Callable[[list[str], list[int]], torch.Tensor]:
    """prompts, seeds -> latents, sampled by ComfyUI itself (what KSampler does, one prompt and seed at a time).

    KSampler returns latents in the VAE's space (`process_latent_out`: SD1.5's are the model's divided by 0.18215);
    the objective noises them as the model sees them, so they go back through `process_latent_in`."""
    template = comfy.sample.fix_empty_latent_channels(model, latent["samples"][:1])

    def encode(prompt: str) -> list:
        return clip.encode_from_tokens_scheduled(clip.tokenize(prompt), show_pbar=False)

    def sample(prompts: list[str], seeds: list[int]) -> torch.Tensor:
        negative = encode("")
        cache: dict[str, list] = {}
        out = []
        with torch.no_grad():
            for prompt, seed in zip(prompts, seeds):
                comfy.model_management.throw_exception_if_processing_interrupted()
                positive = cache.setdefault(prompt, encode(prompt))
                empty = torch.zeros_like(template)
                noise = comfy.sample.prepare_noise(empty, seed)
                out.append(comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative,
                                               empty, seed=seed, disable_pbar=True))
            return model.model.process_latent_in(torch.cat(out).float())
    return sample


def progress_reporter(total: int) -> Callable[[int, int, str], None]:
    """A growth-loop callback that drives ComfyUI's progress bar (whose update is also what makes Cancel work)."""
    bar = comfy.utils.ProgressBar(total)

    def report(done: int, of: int, _message: str) -> None:
        bar.update_absolute(done, of)
        comfy.model_management.throw_exception_if_processing_interrupted()
    return report


def gradient_budget_gb(model: Any) -> float:
    """How many GB of gradients scoring may hold at once for this MODEL (`growth.budget_for_weights`)."""
    return budget_for_weights(sum(p.numel() * p.element_size() for p in model.model.diffusion_model.parameters()))


def adapter_for(model: Any, clip: Any | None, sampler: Callable, granularity: str, blocks: str) -> ComfyDiffusion:
    check_model_type(model, clip)
    return ComfyDiffusion(model, clip, sampler, granularity, blocks)
