"""ESD-x baseline: Erasing Concepts from Diffusion Models (Gandikota, Materzyńska, Fiotto-Kaufman, Bau, ICCV 2023;
arXiv 2303.07345), the variant that fine-tunes cross-attention only.

The paper's recipe: a frozen copy θ* of the model gives the negatively guided target

    v_target = v_θ*(x_t, ∅) − η (v_θ*(x_t, c) − v_θ*(x_t, ∅)),

and the model θ is trained so that its prediction for the concept prompt, v_θ(x_t, c), matches it (MSE). Only the
`attn2` parameters are trained (ESD-x). That means every linear of each cross-attention, `to_q`, `to_k`, `to_v` and
`to_out`, weights and biases, as in the reference code's `esd-x`. Each iteration takes one example (batch 1): a
random concept prompt and seed, and a random step k of the sampling schedule. x_t is obtained by running the frozen
model's guided sampler from pure noise for k steps, then t = t_k. The optimiser is Adam, with η = 1. MiniCanvas is
rectified flow: x_t = (1−t)·x0 + t·ε and the network predicts v = ε − x0. Since v is linear in ε, the guidance
formula applies to v exactly as it does to ε.

Choices where the paper is silent, or where it had to be scaled to MiniCanvas:
- **Iterations: 1000, the paper's count, unchanged.** One iteration costs about 10 guided sampler steps, one more
  guided pass for the target, and one forward and backward pass. On MiniDiT that is about 0.12 s on one CPU thread:
  a run took 121 s on one thread of a 2-core machine, with a 2-thread job on it too.
- **Learning rate 2.5e-5, the paper's 1e-5 scaled by the weight scale.** Adam moves every weight by about lr per
  step, whatever the gradient's size, so the relative change of a layer after n steps is about n·lr/RMS(W). Weight
  RMS goes as 1/√fan_in. SD1.4's cross-attention projections read 768-wide CLIP-L vectors; MiniDiT's read
  128-wide ones, and their measured RMS, 0.075–0.094, is about 1/√128 ≈ 0.088. SD's own RMS was not measured here.
  Keeping n·lr/RMS at the paper's value gives lr = 1e-5·√(768/128) ≈ 2.5e-5. (The reference code's later recipe,
  200 iterations at 5e-5, keeps the same n·lr.)
- **Concept prompts.** The paper trains on one prompt, the concept's name. By default each iteration here draws
  one of the forget set's prompts, which name the concept in the captions MiniCanvas knows. The anchor prompts are
  not used: ESD's target is the empty prompt's prediction, pushed away from the concept. These captions also name
  an object, so the negative guidance pushes away from the object as well, and nothing protects the other styles'
  objects. `prompts=(forget_set.concept,)` gives the paper's single concept-name prompt instead.
- **x_t.** It comes from partial sampling of the *frozen* model, as the reference diffusers code (`esd_sd.py`)
  does. The original CompVis script sampled the model being trained. Sampling uses MiniCanvas's own sampler
  schedule (20 Euler steps, where SD used 50 DDIM steps) at ESD's sampling guidance of 3, so k is uniform on
  {0..19} and t on {1, 0.95, ..., 0.05}.
- **Probe.** `stats` reports the ESD loss on a fixed probe of 8 examples that training never draws, before and
  after training. It is a check that the objective was optimised, independent of the classifiers.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call

from razor_core.forget_set import ForgetSet
from razor_core.minicanvas.pipeline import DEFAULT_STEPS, TIMESTEP_MULTIPLIER, MiniCanvasPipeline

ITERATIONS = 1000
LEARNING_RATE = 2.5e-5
NEGATIVE_GUIDANCE = 1.0  # η
SAMPLE_GUIDANCE = 3.0  # classifier-free guidance of the partial sampling that produces x_t (ESD's default)
PROBE_SIZE = 8


@dataclass(frozen=True)
class EsdExample:
    """One training example: the frozen model's partial sample x_t at time t, the concept prompt's context, and the
    negatively guided target for the model's prediction there."""
    x_t: torch.Tensor  # (1, C, H, W)
    t: torch.Tensor  # (1,)
    context: torch.Tensor  # (1, L, D)
    target: torch.Tensor  # (1, C, H, W)


def negative_guidance_target(v_concept: torch.Tensor, v_null: torch.Tensor, eta: float) -> torch.Tensor:
    """ESD's target: the unconditional prediction, pushed η times the concept's guidance direction away."""
    return v_null - eta * (v_concept - v_null)


def cross_attention_names(denoiser: torch.nn.Module) -> list[str]:
    """The parameters ESD-x trains: everything inside an `attn2`."""
    return [name for name, _ in denoiser.named_parameters() if ".attn2." in f".{name}"]


@torch.no_grad()
def draw_example(pipe: MiniCanvasPipeline, contexts: torch.Tensor, null: torch.Tensor, eta: float,
                 generator: torch.Generator, steps: int = DEFAULT_STEPS,
                 guidance: float = SAMPLE_GUIDANCE) -> EsdExample:
    """Pick a concept prompt, a seed and a step k; sample the frozen model k Euler steps from noise; and take the
    frozen predictions at (x_t, t_k) for the target."""
    den = pipe.denoiser
    size = den.grid * den.patch_size
    context = contexts[torch.randint(len(contexts), (1,), generator=generator)]
    x = torch.randn(1, den.in_channels, size, size, generator=generator)
    stop = int(torch.randint(steps, (1,), generator=generator))
    ts = torch.linspace(1.0, 0.0, steps + 1)
    both = torch.cat([context, null])
    for i in range(stop):
        v_concept, v_null = pipe.velocity(torch.cat([x, x]), ts[i].repeat(2), both).chunk(2)
        x = x + (ts[i + 1] - ts[i]) * (v_null + guidance * (v_concept - v_null))
    t = ts[stop].reshape(1)
    v_concept, v_null = pipe.velocity(torch.cat([x, x]), t.repeat(2), both).chunk(2)
    return EsdExample(x, t, context, negative_guidance_target(v_concept, v_null, eta))


def esd_loss(pipe: MiniCanvasPipeline, params: dict[str, torch.Tensor], example: EsdExample) -> torch.Tensor:
    """MSE between the model's concept prediction, with `params` in place of the denoiser's own, and the target."""
    prediction = functional_call(pipe.denoiser, params,
                                 (example.x_t, example.t * TIMESTEP_MULTIPLIER, example.context))
    return F.mse_loss(prediction, example.target)


def esd_x_edit(pipe: MiniCanvasPipeline, forget_set: ForgetSet, iterations: int = ITERATIONS,
               lr: float = LEARNING_RATE, eta: float = NEGATIVE_GUIDANCE, steps: int = DEFAULT_STEPS,
               guidance: float = SAMPLE_GUIDANCE, seed: int = 0, probe_size: int = PROBE_SIZE,
               prompts: tuple[str, ...] | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Train copies of the `attn2` parameters with ESD and return their deltas, keyed by the denoiser's parameter
    names, plus run statistics. `pipe.denoiser` serves as the frozen model and is left unchanged. `prompts` are
    the concept prompts to train on; they default to the forget set's prompts."""
    start_time = time.time()
    frozen = {name: p.detach() for name, p in pipe.denoiser.named_parameters()}
    trained = {name: frozen[name].clone().requires_grad_(True) for name in cross_attention_names(pipe.denoiser)}
    params = {**frozen, **trained}
    contexts, null = pipe.encode(list(prompts or forget_set.forget_prompts)), pipe.encode([""])
    probe_generator = torch.Generator().manual_seed(seed + 1)
    probe = [draw_example(pipe, contexts, null, eta, probe_generator, steps, guidance) for _ in range(probe_size)]

    def probe_loss() -> float:
        with torch.no_grad():
            return sum(float(esd_loss(pipe, params, example)) for example in probe) / probe_size

    probe_before = probe_loss()
    optimizer = torch.optim.Adam(trained.values(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(iterations):
        example = draw_example(pipe, contexts, null, eta, generator, steps, guidance)
        optimizer.zero_grad()
        esd_loss(pipe, params, example).backward()
        optimizer.step()
    deltas = {name: (p - frozen[name]).detach() for name, p in trained.items()}
    stats = {"iterations": iterations, "backward_passes": iterations, "lr": lr, "eta": eta,
             "probe_loss_before": probe_before, "probe_loss_after": probe_loss(),
             "seconds": round(time.time() - start_time, 2)}
    return deltas, stats
