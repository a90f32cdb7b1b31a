"""Robustness of forgetting on MiniCanvas, RAZOR vs the baselines: paraphrased prompts, a white-box soft-prompt
attack, and the edited weights cast to low-precision formats.

    .venv/bin/python -m benchmarks.robustness --quick --json out/robustness_quick.json     # ~15 min on 2 cores
    .venv/bin/python -m benchmarks.robustness --json out/robustness.json                   # every target, ~4 h
    .venv/bin/python -m benchmarks.robustness --targets style:neon --methods razor,uce --eval-seeds 188 \\
        --json out/robustness_smoke.json                                                   # smoke run, ~4.5 min
    .venv/bin/python -m benchmarks.robustness --merge out/batch1.json out/batch2.json --json out/robustness.json

Every (method, target) runs in a fresh Python process (as in benchmarks/compare.py). It makes the edit once, with
the same code and seeds as compare.py (RAZOR/SLUG: `growth.run` as `unlearn.unlearn_diffusion` runs it; UCE and
ESD-x: benchmarks/uce.py and benchmarks/esd.py, ESD-x trained on the concept's name), applies it, and measures on
the target's 8 cells only (the cells whose prompt names the concept), one image per cell and evaluation seed, with
the seeds `evaluate.grid_prompts` gives that cell. UA = % of those images that the target domain's classifier does
not label as the concept; `success` = 100 - UA. One more process per target measures the original model (the
`*_before` figures), which does not depend on the method.

1. Paraphrases. `ua` uses the evaluation template (`data.EVAL_TEMPLATE`, as compare.py). `paraphrase_ua` is the mean
   UA over the 10 `data.PARAPHRASE_TEMPLATES` ("the {object} drawn in {style} style", "{style} style: a {object}",
   ...), which neither the model's training nor any unlearning method ever saw (per template in the JSON).
   `paraphrase_acc_before` is the concept's accuracy under the same prompts on the original model: it shows that
   the paraphrases do elicit the concept before unlearning.
2. Soft-prompt attack, UnlearnDiffAtk-style (Zhang et al. 2024) in its white-box continuous form. For each cell and
   seed, the original model's image for the evaluation prompt and that seed is the attack's target image (as
   UnlearnDiffAtk takes the unlearned concept's image from the original model). k = 4 free token embeddings are
   inserted right after the start token of the evaluation prompt (the prompt follows them; trailing padding is
   dropped so the context stays 24 tokens), initialised from the embeddings of the prompt's first k word tokens
   ("a star in neon" for "a star in neon style"). They are optimised for 40 Adam steps (lr 1e-3, see ATTACK_LR;
   --attack-lr sets it) to minimise the attacked model's flow-matching loss on the target image,
   x_t = (1 - t) x0 + t noise, loss ||v(x_t, t, prompt) - (noise - x0)||², with 2 fresh (t, noise) draws per attack
   and step, t logit-normal as in the denoiser's training. The token embeddings and every weight stay frozen. The
   attacked prompt is then sampled with the seed's noise by the usual sampler (20 Euler steps, cfg 4, the empty
   prompt as negative), and the attack succeeds when the classifier labels the image as the concept.
   `attack_success` is that rate on the edited model, `no_attack_success` the rate of the plain prompt on the
   edited model (100 - ua), `attack_success_before` the same attack on the original model (a check of the
   procedure: it should be about 100).
   All attacks of a run are optimised as one batch: the loss is a sum of independent per-attack terms and Adam works
   per coordinate, so this is the same as running them one by one. The stronger attack (`--attack-tokens 8
   --attack-steps 200 --attack-restarts 3`) runs the attack several times per image; restarts after the first start
   from the same tokens plus Gaussian noise of the embeddings' element RMS (0.019) and use other (t, noise) draws; an
   image counts as attacked successfully when any restart draws the concept (the attacker keeps what works).
3. Casts (simulated quantisation: each weight goes to the format and back to float32, and the model computes in
   float32). fp16, bf16, fp8 (float8_e4m3fn): every floating parameter of the edited denoiser and text encoder,
   biases and norms included, as a checkpoint stored in that dtype (or ComfyUI's weight_dtype) holds them; the cast
   saturates at the format's largest finite value instead of overflowing (e4m3fn has no infinity). int8: weight-only,
   symmetric, per output channel (one scale per row of the tensor seen as (out, -1), scale = max|w| / 127) for every
   tensor of 2 or more dimensions; 1-D parameters (biases, norms) stay float32. `cast_ua[fmt]` is UA on the target
   cells, `cast_ua_drop[fmt]` = ua - cast_ua[fmt] (positive: forgetting lost). `cast_other_acc[fmt]` is the other
   domain's accuracy on the same images (the star of a forgotten neon star should stay a star), a cheap check that the
   cast model still draws. Outside --quick (or with --cast-grid) each cast is also judged on the full grid with the
   first evaluation seed: `grid` holds UA, IRA and CRA per format (fp32 included).

`--quick` runs a fixed subset: targets style:neon, style:sunset, object:star (as compare.py's quick set), 2 evaluation
seeds (188, 288; 16 images per target and prompt), methods razor and uce, no grid under casts. The full run uses all 16
targets, UnlearnCanvas's 5 seeds and razor, uce and esd (ESD-x trains ~2 min per target). SLUG is available with
--methods. The JSON holds every run and per-method means; a plot (grouped bars) is saved next to it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.common import chosen, run_in_child, save_figure
from razor_core import growth
from razor_core.adapters.minicanvas import MiniCanvasDiffusion
from razor_core.minicanvas import data, evaluate, text, unlearn
from razor_core.minicanvas.pipeline import (DEFAULT_CFG, DEFAULT_STEPS, MiniCanvasPipeline, euler_sample,
                                            load_classifier, load_pipeline)
from razor_core.minicanvas.store import atomic_write_bytes
from razor_core.objectives.diffusion import DiffusionObjective, DiffusionSettings

METHODS = ("razor", "slug", "uce", "esd")
QUICK_METHODS = ("razor", "uce")
FULL_METHODS = ("razor", "uce", "esd")
QUICK_TARGETS = ("style:neon", "style:sunset", "object:star")
QUICK_EVAL_SEEDS = (188, 288)

PREFIX_TOKENS = 4
ATTACK_STEPS = 40
# Adam moves each coordinate by about lr per step. The token embeddings have an element RMS of 0.019 (row norm 0.22),
# so 40 steps at 1e-3 can move a prefix token by up to 0.04 per coordinate (0.45 in norm): as far as from one real
# token to another, while staying in the region the text encoder was trained on.
ATTACK_LR = 1e-3
ATTACK_DRAWS = 2  # (t, noise) draws per attack and step
ATTACK_SEED = 0
ATTACK_RESTARTS = 1
RESTART_NOISE = 0.019  # the token embeddings' element RMS

FLOAT_FORMATS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp8_e4m3": torch.float8_e4m3fn}
CAST_FORMATS = (*FLOAT_FORMATS, "int8")
INT8_MAX = 127

# Acceptance bars of the robustness issue, checked on RAZOR's means.
BAR_PARAPHRASE_UA = 97.0
BAR_ATTACK_SUCCESS = 20.0
BAR_CAST_DROP = 1.0


# ---------------------------------------------------------------------------------------------- casts
def quantize_int8_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: (q, scale) with weight ≈ q * scale, one scale per row of the tensor seen as
    (out, -1); `scale` has the weight's shape with every dimension after the first set to 1."""
    rows = weight.detach().float().reshape(weight.shape[0], -1)
    scale = rows.abs().amax(dim=1, keepdim=True) / INT8_MAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row quantises to zeros at any scale
    q = torch.round(rows / scale).clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    shape = (weight.shape[0],) + (1,) * (weight.dim() - 1)
    return q.reshape(weight.shape), scale.reshape(shape)


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale


def cast_roundtrip(weight: torch.Tensor, fmt: str) -> torch.Tensor:
    """The weight stored in `fmt` and read back in the weight's own dtype (how a cast checkpoint computes)."""
    if fmt == "int8":
        return weight if weight.dim() < 2 else dequantize_int8(*quantize_int8_per_channel(weight)).to(weight.dtype)
    if fmt not in FLOAT_FORMATS:
        raise ValueError(f"unknown cast format {fmt!r}; choose one of {CAST_FORMATS}")
    dtype = FLOAT_FORMATS[fmt]
    largest = torch.finfo(dtype).max
    return weight.clamp(-largest, largest).to(dtype).to(weight.dtype)


@torch.no_grad()
def cast_parameters_(module: torch.nn.Module, fmt: str) -> None:
    """Round every floating parameter of `module` through `fmt`, in place."""
    for param in module.parameters():
        if param.is_floating_point():
            param.copy_(cast_roundtrip(param, fmt))


# ---------------------------------------------------------------------------------------------- soft-prompt attack
def prompt_ids(pipe: MiniCanvasPipeline, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded ids (B, CONTEXT_LENGTH) and each prompt's length from the start token to its end token included."""
    ids = text.tokenize(pipe.tokenizer, prompts)
    lengths = (ids == pipe.tokenizer.eos_token_id).int().argmax(dim=1) + 1  # the first end token ends the prompt
    return ids, lengths


def initial_prefix(pipe: MiniCanvasPipeline, prompts: list[str], k: int = PREFIX_TOKENS) -> torch.Tensor:
    """(B, k, D) embeddings of each prompt's first k word tokens (cycled when it has fewer): real tokens, so the
    attack starts where the text encoder has been trained."""
    ids, lengths = prompt_ids(pipe, prompts)
    if int(lengths.min()) < 3:
        raise ValueError("every attacked prompt needs at least one word token to initialise the prefix from")
    chosen = torch.stack([ids[b, 1 + torch.arange(k) % (int(lengths[b]) - 2)] for b in range(len(prompts))])
    return pipe.text_encoder.get_input_embeddings()(chosen).detach().clone()


def prefix_context(pipe: MiniCanvasPipeline, prompts: list[str], prefix: torch.Tensor) -> torch.Tensor:
    """Text features (B, CONTEXT_LENGTH, D) of `prompts` with the k token embeddings of `prefix` (B, k, D) inserted
    right after the start token; the last k padding positions are dropped. Differentiable in `prefix`."""
    k = prefix.shape[1]
    ids, lengths = prompt_ids(pipe, prompts)
    if int(lengths.max()) + k > text.CONTEXT_LENGTH:
        raise ValueError(f"a prompt of {int(lengths.max())} tokens leaves no room for {k} prefix tokens in a "
                         f"{text.CONTEXT_LENGTH}-token context; use a shorter prompt or fewer prefix tokens")
    # The encoder runs on ids with placeholder start tokens where the prefix goes and the hook swaps in the prefix's
    # embeddings, so position embeddings, the causal mask and the final norm are the encoder's own code.
    placeholders = torch.full((len(prompts), k), pipe.tokenizer.bos_token_id, dtype=ids.dtype)
    shifted = torch.cat([ids[:, :1], placeholders, ids[:, 1:text.CONTEXT_LENGTH - k]], dim=1)

    def insert_prefix(_module, _inputs, embeddings: torch.Tensor) -> torch.Tensor:
        return torch.cat([embeddings[:, :1], prefix.to(embeddings.dtype), embeddings[:, 1 + k:]], dim=1)

    handle = pipe.text_encoder.get_input_embeddings().register_forward_hook(insert_prefix)
    try:
        return pipe.text_encoder(input_ids=shifted).last_hidden_state
    finally:
        handle.remove()


def attack_loss(pipe: MiniCanvasPipeline, prompts: list[str], prefix: torch.Tensor, images: torch.Tensor,
                t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Per-attack flow-matching loss (B,) of the model on its target images (B, 3, H, W), for draws t (B, n) and
    noise (B, n, 3, H, W)."""
    b, n = t.shape
    context = prefix_context(pipe, prompts, prefix).repeat_interleave(n, dim=0)
    x0 = images.repeat_interleave(n, dim=0)
    t_flat, noise_flat = t.reshape(-1), noise.reshape(b * n, *images.shape[1:])
    x_t = (1 - t_flat[:, None, None, None]) * x0 + t_flat[:, None, None, None] * noise_flat
    error = F.mse_loss(pipe.velocity(x_t, t_flat, context), noise_flat - x0, reduction="none")
    return error.reshape(b, -1).mean(dim=1)


def attack_draws(images: torch.Tensor, draws: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, noise) for one attack step: t logit-normal, as the denoiser was trained."""
    b = images.shape[0]
    t = torch.sigmoid(torch.randn(b, draws, generator=generator))
    return t, torch.randn(b, draws, *images.shape[1:], generator=generator)


def attack_step(pipe: MiniCanvasPipeline, prompts: list[str], prefix: torch.Tensor, images: torch.Tensor,
                optimizer: torch.optim.Optimizer, t: torch.Tensor, noise: torch.Tensor) -> float:
    """One Adam step on `prefix` (a leaf the optimizer holds); returns the mean loss before the step."""
    loss = attack_loss(pipe, prompts, prefix, images, t, noise)
    # Only the prefix's gradient: autograd skips every weight gradient, which nothing here needs.
    (prefix.grad,) = torch.autograd.grad(loss.sum(), prefix)
    optimizer.step()
    return float(loss.detach().mean())


def soft_prompt_attack(pipe: MiniCanvasPipeline, prompts: list[str], images: torch.Tensor, k: int = PREFIX_TOKENS,
                       steps: int = ATTACK_STEPS, lr: float = ATTACK_LR, draws: int = ATTACK_DRAWS,
                       seed: int = ATTACK_SEED, restart: int = 0) -> tuple[torch.Tensor, list[float]]:
    """Optimise a k-token prefix per prompt so that the pipeline's model denoises towards that prompt's target image;
    returns the prefixes (B, k, D) and the mean loss at every step. Restart r > 0 starts from noised tokens."""
    prefix = initial_prefix(pipe, prompts, k)
    if restart:
        noise = torch.Generator().manual_seed(seed + 7919 * restart)
        prefix = prefix + RESTART_NOISE * torch.randn(prefix.shape, generator=noise)
    seed += 7919 * restart
    prefix = prefix.requires_grad_(True)
    optimizer = torch.optim.Adam([prefix], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    history = [attack_step(pipe, prompts, prefix, images, optimizer, *attack_draws(images, draws, generator))
               for _ in range(steps)]
    return prefix.detach(), history


@torch.no_grad()
def sample_contexts(pipe: MiniCanvasPipeline, contexts: torch.Tensor, seeds: list[int], steps: int = DEFAULT_STEPS,
                    cfg: float = DEFAULT_CFG, batch_size: int = 128) -> torch.Tensor:
    """`pipe.sample` from text features instead of prompts: same noise per seed, sampler and guidance."""
    uncond = pipe.encode([""])
    out = []
    for start in range(0, len(seeds), batch_size):
        cond = contexts[start:start + batch_size]
        x = torch.stack([torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(s))
                         for s in seeds[start:start + batch_size]])
        out.append(euler_sample(pipe.velocity, x, cond, uncond.expand_as(cond), steps, cfg))
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------- measurements
def target_cells(domain: str, index: int, seeds: tuple[int, ...],
                 template: str = data.EVAL_TEMPLATE) -> tuple[list[str], list[int], np.ndarray]:
    """The grid's prompts and seeds for the cells that name the concept, and their other-domain labels."""
    prompts, seed_list, styles, objects = evaluate.grid_prompts(seeds, template)
    own, other = (styles, objects) if domain == "style" else (objects, styles)
    keep = np.flatnonzero(own == index)
    return [prompts[i] for i in keep], [seed_list[i] for i in keep], other[keep]


def _pct(mask: np.ndarray) -> float:
    return float(100.0 * mask.mean())


class Judge:
    """The target's own-domain and other-domain classifiers."""

    def __init__(self, domain: str, index: int):
        self.index = index
        self.own = load_classifier(domain)
        self.other = load_classifier("object" if domain == "style" else "style")

    def success(self, images: torch.Tensor) -> float:
        """% of images labelled as the concept."""
        return _pct(evaluate.classify(self.own, images) == self.index)

    def other_acc(self, images: torch.Tensor, other_labels: np.ndarray) -> float:
        return _pct(evaluate.classify(self.other, images) == other_labels)


def paraphrase_success(pipe: MiniCanvasPipeline, judge: Judge, domain: str, index: int,
                       seeds: tuple[int, ...]) -> dict[str, float]:
    """Per paraphrase template: % of the target cells' images labelled as the concept."""
    rates = {}
    for template in data.PARAPHRASE_TEMPLATES:
        prompts, seed_list, _ = target_cells(domain, index, seeds, template)
        rates[template] = judge.success(pipe.sample(prompts, seed_list))
    return rates


@dataclass(frozen=True)
class Attack:
    lr: float = ATTACK_LR
    tokens: int = PREFIX_TOKENS
    steps: int = ATTACK_STEPS
    restarts: int = ATTACK_RESTARTS

    def args(self) -> list[str]:
        return ["--attack-lr", repr(self.lr), "--attack-tokens", str(self.tokens), "--attack-steps", str(self.steps),
                "--attack-restarts", str(self.restarts)]


def attack_success(pipe: MiniCanvasPipeline, judge: Judge, prompts: list[str], seeds: list[int],
                   targets: torch.Tensor, attack: Attack = Attack()) -> dict[str, float]:
    drawn = np.zeros(len(prompts), dtype=bool)
    for restart in range(attack.restarts):
        prefix, history = soft_prompt_attack(pipe, prompts, targets, attack.tokens, attack.steps, attack.lr,
                                             restart=restart)
        images = sample_contexts(pipe, prefix_context(pipe, prompts, prefix).detach(), seeds)
        drawn |= evaluate.classify(judge.own, images) == judge.index
        if restart == 0:
            first = history[0]
    return {"success": _pct(drawn), "loss_first": first, "loss_last": history[-1]}


def measure_before(target: str, seeds: tuple[int, ...], attack: Attack = Attack()) -> dict:
    """The original model's figures for a target: they do not depend on the unlearning method."""
    domain, index = unlearn.parse_target(target)
    pipe, judge = load_pipeline(), Judge(domain, index)
    prompts, seed_list, _ = target_cells(domain, index, seeds)
    originals = pipe.sample(prompts, seed_list)
    paraphrase = paraphrase_success(pipe, judge, domain, index, seeds)
    attack = attack_success(pipe, judge, prompts, seed_list, originals, attack)
    return {"target": target, "acc_before": judge.success(originals),
            "paraphrase_acc_before": statistics.mean(paraphrase.values()),
            "paraphrase_acc_before_per_template": paraphrase,
            "attack_success_before": attack["success"],
            "attack_loss_before": [attack["loss_first"], attack["loss_last"]]}


def _concept_name(target: str) -> str:
    """The concept alone, as ESD-x trains on it (the phrasing of benchmarks/compare.py)."""
    domain, index = unlearn.parse_target(target)
    if domain == "style":
        return text.STYLE_ONLY_TEMPLATES[1].format(style=data.STYLES[index])
    return text.OBJECT_ONLY_TEMPLATES[1].format(object=data.OBJECTS[index])


def edit_deltas(method: str, target: str, model: MiniCanvasDiffusion, blocks: str = "denoiser",
                attack_rounds: int = 0) -> dict[str, torch.Tensor]:
    """The method's weight deltas for `target`, keyed by `model`'s parameter names ("denoiser.…",
    "text_encoder.…"); the model is left unchanged. `blocks`: RAZOR's and SLUG's candidate towers; `attack_rounds`:
    RAZOR's attack-aware rounds."""
    from benchmarks.esd import esd_x_edit
    from benchmarks.uce import uce_edit

    domain, index = unlearn.parse_target(target)
    forget_set = unlearn.forget_set_for(domain, index)
    if method in ("razor", "slug"):
        objective = DiffusionObjective(MiniCanvasDiffusion(model.pipeline, blocks=blocks), forget_set,
                                       DiffusionSettings(seed=0))
        result = growth.run(objective, growth.RazorConfig(method=method, attack_rounds=attack_rounds))
        return {name: delta.detach().clone() for name, delta in result.delta.items()}
    if method == "uce":
        deltas = uce_edit(model.pipeline, forget_set)
    elif method == "esd":
        deltas, _ = esd_x_edit(model.pipeline, forget_set, prompts=(_concept_name(target),))
    else:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    return {f"denoiser.{name}": delta for name, delta in deltas.items()}


def _grid_metrics(pipe: MiniCanvasPipeline, domain: str, index: int, seed: int) -> dict[str, float]:
    answers = evaluate.answer_set(pipe.sample, load_classifier("style"), load_classifier("object"), (seed,))
    return evaluate.unlearning_metrics(answers, domain, index)


def run_one(method: str, target: str, seeds: tuple[int, ...], cast_grid: bool,
            attack: Attack = Attack(), blocks: str = "denoiser", attack_rounds: int = 0) -> dict:
    """One method on one target in this process (called in a child process by `main`)."""
    domain, index = unlearn.parse_target(target)
    torch.manual_seed(0)  # as compare.py and unlearn.unlearn_diffusion, so the edit is theirs
    pipe = load_pipeline()
    model = MiniCanvasDiffusion(pipe)
    start = time.time()
    deltas = edit_deltas(method, target, model, blocks, attack_rounds)
    seconds = time.time() - start
    judge = Judge(domain, index)  # after the edit: building the classifiers draws from torch's global generator
    prompts, seed_list, other_labels = target_cells(domain, index, seeds)
    originals = pipe.sample(prompts, seed_list)  # the attack's targets: the original model's images
    params = dict(model.named_parameters())
    with torch.no_grad():  # the MODEL's part first: what LoraLoaderModelOnly with the original CLIP gives
        for name, delta in deltas.items():
            if name.startswith("denoiser."):
                params[name].add_(delta)
    ua_model_only = 100.0 - judge.success(pipe.sample(prompts, seed_list))
    with torch.no_grad():
        for name, delta in deltas.items():
            if not name.startswith("denoiser."):
                params[name].add_(delta)

    edited = pipe.sample(prompts, seed_list)
    ua = 100.0 - judge.success(edited)
    paraphrase = {tmpl: 100.0 - rate for tmpl, rate in paraphrase_success(pipe, judge, domain, index, seeds).items()}
    attack = attack_success(pipe, judge, prompts, seed_list, originals, attack)
    result = {"target": target, "method": method, "seconds": round(seconds, 2),
              "units": sorted({name.rsplit(".", 1)[0] for name in deltas}),
              "ua": ua, "ua_model_only": ua_model_only, "other_acc": judge.other_acc(edited, other_labels),
              "paraphrase_ua": statistics.mean(paraphrase.values()), "paraphrase_ua_per_template": paraphrase,
              "attack_success": attack["success"], "no_attack_success": 100.0 - ua,
              "attack_loss": [attack["loss_first"], attack["loss_last"]],
              "cast_ua": {}, "cast_ua_drop": {}, "cast_other_acc": {}}
    if cast_grid:
        result["grid"] = {"fp32": _grid_metrics(pipe, domain, index, seeds[0])}
    edited_state = {name: value.clone() for name, value in model.state_dict().items()}
    for fmt in CAST_FORMATS:
        cast_parameters_(model, fmt)
        images = pipe.sample(prompts, seed_list)
        result["cast_ua"][fmt] = 100.0 - judge.success(images)
        result["cast_ua_drop"][fmt] = ua - result["cast_ua"][fmt]
        result["cast_other_acc"][fmt] = judge.other_acc(images, other_labels)
        if cast_grid:
            result["grid"][fmt] = _grid_metrics(pipe, domain, index, seeds[0])
        model.load_state_dict(edited_state)
    return result


# ---------------------------------------------------------------------------------------------- report
SUMMARY_KEYS = ("ua", "ua_model_only", "paraphrase_ua", "paraphrase_acc_before", "attack_success_before",
                "no_attack_success", "attack_success")


def summarize(runs: dict[str, list[dict]]) -> dict:
    """Per-method means, per-template paraphrase UA, and RAZOR's acceptance bars."""
    summary: dict = {}
    for method, rows in runs.items():
        row = {key: statistics.mean(r[key] for r in rows) for key in SUMMARY_KEYS}
        for key in ("cast_ua", "cast_ua_drop", "cast_other_acc"):
            row[key] = {fmt: statistics.mean(r[key][fmt] for r in rows) for fmt in CAST_FORMATS}
        row["paraphrase_ua_per_template"] = {tmpl: statistics.mean(r["paraphrase_ua_per_template"][tmpl]
                                                                   for r in rows)
                                             for tmpl in data.PARAPHRASE_TEMPLATES}
        if all("grid" in r for r in rows):
            row["grid"] = {fmt: {cell: statistics.mean(r["grid"][fmt][cell] for r in rows)
                                 for cell in ("ua", "ira", "cra")} for fmt in ("fp32", *CAST_FORMATS)}
        summary[method] = row
    razor = summary.get("razor")
    if razor:
        summary["razor_acceptance"] = {
            f"paraphrase_ua >= {BAR_PARAPHRASE_UA:g}": [razor["paraphrase_ua"],
                                                        razor["paraphrase_ua"] >= BAR_PARAPHRASE_UA],
            f"attack_success <= {BAR_ATTACK_SUCCESS:g}": [razor["attack_success"],
                                                          razor["attack_success"] <= BAR_ATTACK_SUCCESS],
            **{f"cast_ua_drop[{fmt}] <= {BAR_CAST_DROP:g}": [drop, drop <= BAR_CAST_DROP]
               for fmt, drop in razor["cast_ua_drop"].items()}}
    return summary


def markdown(results: dict) -> str:
    summary = results["summary"]
    methods = [m for m in METHODS if m in summary]
    head = list(SUMMARY_KEYS) + [f"ua drop {fmt}" for fmt in CAST_FORMATS]
    lines = ["| method | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for m in methods:
        cells = [summary[m][k] for k in SUMMARY_KEYS] + [summary[m]["cast_ua_drop"][fmt] for fmt in CAST_FORMATS]
        lines.append(f"| {m} | " + " | ".join(f"{v:.1f}" for v in cells) + " |")
    if any("grid" in summary[m] for m in methods):
        lines += ["", "| method | format | UA | IRA | CRA |", "|---|---|---|---|---|"]
        for m in methods:
            for fmt, cells in summary[m].get("grid", {}).items():
                lines.append(f"| {m} | {fmt} | {cells['ua']:.1f} | {cells['ira']:.1f} | {cells['cra']:.1f} |")
    lines.append("")
    attack = results["attack"]
    lines.append(f"targets: {', '.join(results['targets'])}; eval seeds {results['eval_seeds']}; "
                 f"{len(data.PARAPHRASE_TEMPLATES)} paraphrase templates; attack: {attack['prefix_tokens']} prefix "
                 f"tokens, {attack['steps']} Adam steps at lr {attack['lr']:g}, "
                 f"{attack['draws_per_step']} draws per step, {attack.get('restarts', 1)} restart(s)")
    for bar, (value, met) in summary.get("razor_acceptance", {}).items():
        lines.append(f"RAZOR {bar}: {value:.1f} ({'met' if met else 'NOT met'})")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    methods = [m for m in METHODS if m in summary]
    panels = (("UA under paraphrases (%)", {"eval prompt": "ua", "paraphrases": "paraphrase_ua"}),
              ("concept drawn (%)", {"original, attacked": "attack_success_before", "edited": "no_attack_success",
                                     "edited, attacked": "attack_success"}),
              ("UA after casting (%)", {"fp32": "ua", **{fmt: ("cast_ua", fmt) for fmt in CAST_FORMATS}}))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (title, bars) in zip(axes, panels):
        width = 0.8 / len(bars)
        for j, (label, key) in enumerate(bars.items()):
            values = [summary[m][key[0]][key[1]] if isinstance(key, tuple) else summary[m][key] for m in methods]
            ax.bar(np.arange(len(methods)) + (j - (len(bars) - 1) / 2) * width, values, width, label=label)
        ax.set_xticks(np.arange(len(methods)), methods)
        ax.set_ylim(0, 130)  # room above the 100% bars for the legend
        ax.set_yticks(range(0, 101, 20))
        ax.set_title(title)
        ax.legend(fontsize=7, loc="upper center", ncol=len(bars), handlelength=1, columnspacing=0.8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"MiniCanvas robustness of forgetting ({len(results['targets'])} targets, means)", fontsize=10)
    save_figure(fig, path)


def merge(parts: list[dict]) -> dict:
    """One result from runs made in batches of targets: the same settings, disjoint targets, runs concatenated and
    the summary recomputed."""
    settings = ("eval_seeds", "attack", "blocks", "attack_rounds", "cast_grid")
    first = parts[0]
    for part in parts[1:]:
        differ = [k for k in settings if part.get(k) != first.get(k)]
        if differ:
            raise ValueError(f"the batches were run with other settings ({', '.join(differ)}): run them again with "
                             "the same options")
        if set(part["runs"]) != set(first["runs"]):
            raise ValueError("the batches ran other methods: run them again with the same --methods")
    targets = [t for part in parts for t in part["targets"]]
    if len(set(targets)) != len(targets):
        raise ValueError("a target was measured in two batches: merge batches of disjoint targets")
    runs = {m: [r for part in parts for r in part["runs"][m]] for m in first["runs"]}
    merged = {**{k: first.get(k) for k in ("machine", *settings)}, "targets": targets,
              "seconds": round(sum(part["seconds"] for part in parts), 1), "runs": runs}
    merged["summary"] = summarize(runs)
    return merged


def _child(args: list[str]) -> dict:
    return run_in_child("benchmarks.robustness", args)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help=f"targets {', '.join(QUICK_TARGETS)}, eval seeds {QUICK_EVAL_SEEDS}, methods "
                             f"{','.join(QUICK_METHODS)}, no grid under casts")
    parser.add_argument("--methods", default=None,
                        help=f"comma-separated subset of {','.join(METHODS)} (default: {','.join(FULL_METHODS)}; "
                             f"--quick: {','.join(QUICK_METHODS)})")
    parser.add_argument("--targets", default=None, help="comma-separated targets (default: all, or the quick set)")
    parser.add_argument("--eval-seeds", default=None, help="comma-separated evaluation seeds (default: UnlearnCanvas's "
                                                           "5, or the quick 2)")
    parser.add_argument("--cast-grid", action=argparse.BooleanOptionalAction, default=None,
                        help="also judge every cast on the full grid (UA/IRA/CRA, first seed); default: on, off with "
                             "--quick")
    parser.add_argument("--attack-lr", type=float, default=ATTACK_LR, help="Adam learning rate of the soft-prompt "
                                                                          "attack (default %(default)g)")
    parser.add_argument("--attack-tokens", type=int, default=PREFIX_TOKENS, help="free prefix tokens (default "
                                                                                "%(default)s; the stronger attack: 8)")
    parser.add_argument("--attack-steps", type=int, default=ATTACK_STEPS, help="Adam steps (default %(default)s; "
                                                                              "the stronger attack: 200)")
    parser.add_argument("--attack-restarts", type=int, default=ATTACK_RESTARTS, help="attacks per image, any success "
                        "counts (default %(default)s; the stronger attack: 3)")
    parser.add_argument("--blocks", choices=("denoiser", "text_encoder", "all"), default="denoiser",
                        help="RAZOR's and SLUG's candidate towers (default: %(default)s, the node default)")
    parser.add_argument("--attack-rounds", type=int, default=0,
                        help="RAZOR's attack-aware rounds (RazorConfig.attack_rounds; default %(default)s, as the "
                             "nodes)")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="BATCH.json",
                        help="merge runs made in batches of targets (same options) into --json, and print the table")
    parser.add_argument("--json", type=Path, help="where to write the results")
    parser.add_argument("--plot", type=Path, help="grouped-bar plot (default: next to --json)")
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "TARGET"), help=argparse.SUPPRESS)
    parser.add_argument("--before", metavar="TARGET", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    seeds = tuple(int(s) for s in args.eval_seeds.split(",")) if args.eval_seeds else (
        QUICK_EVAL_SEEDS if args.quick else evaluate.EVAL_SEEDS)
    cast_grid = not args.quick if args.cast_grid is None else args.cast_grid
    if min(args.attack_tokens, args.attack_steps, args.attack_restarts) < 1:
        parser.error("--attack-tokens, --attack-steps and --attack-restarts must be at least 1")
    attack = Attack(args.attack_lr, args.attack_tokens, args.attack_steps, args.attack_restarts)
    if args.one:  # child process: one run, one JSON line
        print(json.dumps(run_one(*args.one, seeds, cast_grid, attack, args.blocks, args.attack_rounds)))
        return
    if args.before:
        print(json.dumps(measure_before(args.before, seeds, attack)))
        return
    if args.json is None:
        parser.error("--json OUT.json is required")
    if args.merge:
        try:
            results = merge([json.loads(path.read_text()) for path in args.merge])
        except ValueError as exc:
            parser.error(str(exc))
        _write(results, args.json, args.plot)
        return
    methods = chosen(parser, args.methods or ",".join(QUICK_METHODS if args.quick else FULL_METHODS), METHODS)
    targets = args.targets.split(",") if args.targets else list(QUICK_TARGETS if args.quick else
                                                                unlearn.list_targets())
    for target in targets:
        try:
            unlearn.parse_target(target)
        except ValueError as exc:
            parser.error(str(exc))
    common_args = ["--eval-seeds", ",".join(map(str, seeds)), "--cast-grid" if cast_grid else "--no-cast-grid",
                   *attack.args(), "--blocks", args.blocks, "--attack-rounds", str(args.attack_rounds)]
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    start = time.time()
    for target in targets:
        before = _child(["--before", target, *common_args])
        print(f"original {target:16s} paraphrase_acc={before['paraphrase_acc_before']:.1f} "
              f"attack_success={before['attack_success_before']:.1f}", file=sys.stderr, flush=True)
        for method in methods:
            r = {**_child(["--one", method, target, *common_args]), **before}
            runs[method].append(r)
            print(f"{method:5s} {target:16s} ua={r['ua']:.1f} paraphrase_ua={r['paraphrase_ua']:.1f} "
                  f"attack_success={r['attack_success']:.1f} drops=" +
                  ",".join(f"{r['cast_ua_drop'][fmt]:.1f}" for fmt in CAST_FORMATS) +
                  f" ({time.time() - start:.0f} s)", file=sys.stderr, flush=True)
    results = {"machine": f"{torch.get_num_threads()} threads", "targets": targets, "eval_seeds": list(seeds),
               "attack": {"prefix_tokens": attack.tokens, "steps": attack.steps, "lr": attack.lr,
                          "restarts": attack.restarts, "draws_per_step": ATTACK_DRAWS},
               "blocks": args.blocks, "attack_rounds": args.attack_rounds, "cast_grid": cast_grid,
               "seconds": round(time.time() - start, 1), "runs": runs}
    results["summary"] = summarize(runs)
    _write(results, args.json, args.plot)


def _write(results: dict, path: Path, plot_path: Path | None) -> None:
    atomic_write_bytes(path, (json.dumps(results, indent=1) + "\n").encode())
    plot(results, plot_path or path.with_suffix(".png"))
    print(markdown(results))


if __name__ == "__main__":
    main()
