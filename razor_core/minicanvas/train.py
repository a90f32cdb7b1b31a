"""Train the MiniCanvas models (one-off; never part of tests or CI). Fixed seeds; writes weights + manifest.

    .venv/bin/python -m razor_core.minicanvas.train [--only tokenizer,clip,classifiers,denoiser]
        [--denoiser-minutes 70] [--denoiser-resume] [--denoiser-lr 5e-4]

Order matters: the tokenizer first, then CLIP stage 1, whose text tower is exported as the diffusion model's frozen
text encoder (as CLIP-L is for SD1.5), then CLIP stage 2, the classifiers, and last the denoiser. Each stage seeds
itself, so running the stages separately (`--only`) gives the same weights as one run.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import random
import shlex
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import data, store, text
from .classifier import ConceptClassifier, to_model_input
from .denoiser import DEFAULT_CONFIG, MiniDiT
from .pipeline import TIMESTEP_MULTIPLIER, tokenizer_dir

COMPONENTS = ("tokenizer", "clip", "text_encoder", "clip_finetune", "classifiers", "denoiser")
TRAIN_PER_CELL = 300


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _provenance(seconds: float, **extra) -> dict:
    return {
        "command": "python -m razor_core.minicanvas.train " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "train_seconds": round(seconds, 1),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".strip(),
        "torch": torch.__version__, **extra,
    }


def _train_images() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    images, styles, objects = data.build_split("train", TRAIN_PER_CELL)
    return to_model_input(torch.from_numpy(images)), torch.from_numpy(styles), torch.from_numpy(objects)


def train_tokenizer() -> None:
    start = time.time()
    out = store.WEIGHTS_DIR / "tokenizer"
    text.train_tokenizer(out)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        store.record_file(f"tokenizer/{name}", _provenance(time.time() - start))


def _clip_batch_captions(styles: torch.Tensor, objects: torch.Tensor, rng: random.Random):
    """One caption per image: 70% style+object, 15% style only, 15% object only; plus the label each names."""
    captions, cap_style, cap_obj = [], [], []
    for s, o in zip(styles.tolist(), objects.tolist()):
        r = rng.random()
        if r < 0.7:
            captions.append(rng.choice(data.TRAIN_TEMPLATES).format(style=data.STYLES[s], object=data.OBJECTS[o]))
            cap_style.append(s), cap_obj.append(o)
        elif r < 0.85:
            captions.append(rng.choice(text.STYLE_ONLY_TEMPLATES).format(style=data.STYLES[s]))
            cap_style.append(s), cap_obj.append(-1)
        else:
            captions.append(rng.choice(text.OBJECT_ONLY_TEMPLATES).format(object=data.OBJECTS[o]))
            cap_style.append(-1), cap_obj.append(o)
    return captions, torch.tensor(cap_style), torch.tensor(cap_obj)


def clip_targets(img_style: torch.Tensor, img_obj: torch.Tensor, cap_style: torch.Tensor,
                 cap_obj: torch.Tensor) -> torch.Tensor:
    """Multi-positive matrix: caption j matches image i when every attribute the caption names agrees."""
    ok_s = (cap_style[None, :] == -1) | (cap_style[None, :] == img_style[:, None])
    ok_o = (cap_obj[None, :] == -1) | (cap_obj[None, :] == img_obj[:, None])
    return (ok_s & ok_o).float()


def _fit_clip(model, tokenizer, epochs: int, max_lr: float, seed: int, batch_size: int = 256) -> float:
    """Contrastive training with multi-positive targets (many images share a caption's concepts). The caller seeds
    torch before building the model; `seed` drives the caption sampling."""
    images, styles, objects = _train_images()
    opt = torch.optim.AdamW(model.parameters(), lr=max_lr, weight_decay=0.1)
    steps = epochs * (len(images) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=steps, pct_start=0.1)
    rng = random.Random(seed)
    model.train()
    for _ in tqdm(range(epochs), desc="clip epochs"):
        perm = torch.randperm(len(images))
        for b in range(len(images) // batch_size):
            idx = perm[b * batch_size:(b + 1) * batch_size]
            captions, cs, co = _clip_batch_captions(styles[idx], objects[idx], rng)
            out = model(input_ids=text.tokenize(tokenizer, captions), pixel_values=images[idx])
            target = clip_targets(styles[idx], objects[idx], cs, co)
            logits = out.logits_per_image
            loss = 0.5 * (F.cross_entropy(logits, target / target.sum(1, keepdim=True))
                          + F.cross_entropy(logits.t(), (target / target.sum(0, keepdim=True)).t()))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return loss.item()


def _save_clip(model, tokenizer, seconds: float, loss: float, stage: str) -> None:
    store.save_weights("clip.safetensors", model.state_dict(), _provenance(seconds, config={
        "text": text.text_config(tokenizer), "vision": text.VISION_CONFIG}, final_loss=round(loss, 4), stage=stage))


def train_clip() -> None:
    """Stage 1: CLIP from scratch. Its text tower becomes the diffusion model's text encoder (`text_encoder`)."""
    _seed(1)
    start = time.time()
    tokenizer = text.load_tokenizer(tokenizer_dir())
    model = text.build_clip(tokenizer)
    loss = _fit_clip(model, tokenizer, epochs=8, max_lr=1e-3, seed=1)
    _save_clip(model, tokenizer, time.time() - start, loss, "1: 8 epochs from scratch")


def finetune_clip() -> None:
    """Stage 2: more CLIP epochs at a lower rate (shapes, the vision tower's harder half, need them). Run after
    `text_encoder` has been exported, so the diffusion model keeps the stage-1 text tower."""
    _seed(4)
    start = time.time()
    tokenizer = text.load_tokenizer(tokenizer_dir())
    model = text.build_clip(tokenizer)
    model.load_state_dict(store.load_tensors("clip.safetensors"))
    loss = _fit_clip(model, tokenizer, epochs=6, max_lr=3e-4, seed=4)
    _save_clip(model, tokenizer, time.time() - start, loss, "2: stage 1 + 6 epochs at max lr 3e-4")


def export_text_encoder() -> None:
    """The diffusion model's text encoder: a frozen copy of CLIP's text tower (as CLIP-L is for SD1.5)."""
    start = time.time()
    tokenizer = text.load_tokenizer(tokenizer_dir())
    prefix = "text_model."
    clip_state = store.load_tensors("clip.safetensors")
    encoder = text.build_text_encoder(tokenizer)
    encoder.load_state_dict({k[len(prefix):]: v for k, v in clip_state.items() if k.startswith(prefix)})
    store.save_weights("text_encoder.safetensors", encoder.state_dict(),
                       _provenance(time.time() - start, config=text.text_config(tokenizer),
                                   source="text tower of clip.safetensors"))


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Noise and blur, so the judges stay reliable on imperfect generated images."""
    sigma = torch.rand(x.shape[0], 1, 1, 1, generator=gen) * 0.15
    x = x + sigma * torch.randn(x.shape, generator=gen)
    blur = torch.rand(x.shape[0], generator=gen) < 0.3
    if blur.any():
        x[blur] = F.avg_pool2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return x


def train_classifiers(epochs: int = 8, batch_size: int = 128) -> None:
    images, styles, objects = _train_images()
    for domain, labels, n in (("style", styles, len(data.STYLES)), ("object", objects, len(data.OBJECTS))):
        _seed(2)
        start = time.time()
        config = {"num_classes": n, "width": 16}
        model = ConceptClassifier(**config)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * (len(images) // batch_size))
        gen = torch.Generator().manual_seed(2)
        model.train()
        for _ in tqdm(range(epochs), desc=f"{domain} classifier epochs"):
            perm = torch.randperm(len(images), generator=gen)
            for b in range(len(images) // batch_size):
                idx = perm[b * batch_size:(b + 1) * batch_size]
                loss = F.cross_entropy(model(_augment(images[idx], gen)), labels[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        store.save_weights(f"{domain}_classifier.safetensors", model.state_dict(),
                           _provenance(time.time() - start, config=config))


def _caption_contexts(tokenizer, encoder) -> dict[str, torch.Tensor]:
    """Text features of every training caption, computed once (the text encoder is frozen)."""
    def encode(prompts: list[str]) -> torch.Tensor:
        with torch.no_grad():
            return encoder(input_ids=text.tokenize(tokenizer, prompts)).last_hidden_state

    return {
        "full": encode([t.format(style=s, object=o) for s in data.STYLES for o in data.OBJECTS
                        for t in data.TRAIN_TEMPLATES]).unflatten(0, (len(data.STYLES), len(data.OBJECTS), -1)),
        "style": encode([t.format(style=s) for s in data.STYLES for t in text.STYLE_ONLY_TEMPLATES]
                        ).unflatten(0, (len(data.STYLES), -1)),
        "object": encode([t.format(object=o) for o in data.OBJECTS for t in text.OBJECT_ONLY_TEMPLATES]
                         ).unflatten(0, (len(data.OBJECTS), -1)),
        "empty": encode([""])[0],
    }


def _batch_contexts(table: dict[str, torch.Tensor], styles: torch.Tensor, objects: torch.Tensor,
                    gen: torch.Generator, p_partial: float = 0.08, p_empty: float = 0.1) -> torch.Tensor:
    """Mostly style+object captions; some name one domain only (so "a star" and "neon style" mean something on
    their own, as single concepts do in SD) and some are empty (for classifier-free guidance)."""
    n = len(styles)
    full = table["full"][styles, objects, torch.randint(0, table["full"].shape[2], (n,), generator=gen)]
    style_only = table["style"][styles, torch.randint(0, table["style"].shape[1], (n,), generator=gen)]
    object_only = table["object"][objects, torch.randint(0, table["object"].shape[1], (n,), generator=gen)]
    r = torch.rand(n, generator=gen)[:, None, None]
    ctx = torch.where(r < p_partial, style_only, full)
    ctx = torch.where((r >= p_partial) & (r < 2 * p_partial), object_only, ctx)
    return torch.where(r >= 1 - p_empty, table["empty"].expand_as(ctx), ctx)


def train_denoiser(minutes: float, batch_size: int = 128, lr: float = 5e-4, resume: bool = False,
                   anneal: bool = False) -> None:
    """Rectified flow: x_t = (1-t) x0 + t eps, predict eps - x0; logit-normal t; EMA weights are what ships.
    With `resume`, training continues from the saved (EMA) weights, e.g. to give a run more minutes; with `anneal`
    the learning rate falls linearly to 10% over the budget (a low-LR finish sharpens samples)."""
    _seed(3 if not resume else 5)
    start = time.time()
    tokenizer = text.load_tokenizer(tokenizer_dir())
    encoder = text.build_text_encoder(tokenizer)
    encoder.load_state_dict(store.load_tensors("text_encoder.safetensors"))
    images, styles, objects = _train_images()
    table = _caption_contexts(tokenizer, encoder)
    model = MiniDiT(**DEFAULT_CONFIG)
    model.initialize_weights(torch.Generator().manual_seed(3))
    done_steps, done_seconds, history = 0, 0.0, []
    if resume:
        model.load_state_dict(store.load_tensors("denoiser.safetensors"))
        previous = store.read_manifest()["files"]["denoiser.safetensors"]
        done_steps, done_seconds = previous["steps"], previous["train_seconds"]
        history = previous.get("history", []) + [{k: previous[k] for k in ("command", "steps", "train_seconds")}]
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    # A resumed run draws batches the earlier runs did not (seeded by the steps already done).
    gen = torch.Generator().manual_seed(3 + done_steps)
    deadline = start + minutes * 60
    step, last_save = 0, time.time()
    bar = tqdm(desc="denoiser steps")
    while time.time() < deadline:
        idx = torch.randint(0, len(images), (batch_size,), generator=gen)
        x0 = images[idx]
        ctx = _batch_contexts(table, styles[idx], objects[idx], gen)
        t = torch.sigmoid(torch.randn(batch_size, generator=gen))
        noise = torch.randn(x0.shape, generator=gen)
        xt = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise
        loss = F.mse_loss(model(xt, t * TIMESTEP_MULTIPLIER, ctx), noise - x0)
        for g in opt.param_groups:
            decay_factor = 1.0 - 0.9 * (time.time() - start) / (minutes * 60) if anneal else 1.0
            g["lr"] = lr * min(1.0, (step + 1) / 300) * decay_factor
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(0.999, (1 + step + done_steps) / (10 + step + done_steps))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        step += 1
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if time.time() - last_save > 300 or time.time() >= deadline:
            store.save_weights("denoiser.safetensors", ema.state_dict(), _provenance(
                done_seconds + time.time() - start, config=DEFAULT_CONFIG, steps=done_steps + step,
                batch_size=batch_size, history=history,
                final_loss=round(loss.item(), 4), objective="rectified flow, v = noise - x0, t*1000"))
            last_save = time.time()
    bar.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(COMPONENTS), help="comma-separated subset of " + ",".join(COMPONENTS))
    parser.add_argument("--denoiser-minutes", type=float, default=75.0, help="wall-clock budget of the denoiser")
    parser.add_argument("--denoiser-lr", type=float, default=5e-4, help="peak learning rate (lower it to refine a "
                                                                        "resumed run)")
    parser.add_argument("--denoiser-resume", action="store_true", help="continue from the saved denoiser weights")
    parser.add_argument("--denoiser-anneal", action="store_true", help="let the learning rate fall linearly to 10%% "
                                                                      "of --denoiser-lr over the budget")
    args = parser.parse_args(argv)
    chosen = args.only.split(",")
    unknown = set(chosen) - set(COMPONENTS)
    if unknown:
        parser.error(f"unknown component(s) {sorted(unknown)}; choose from {COMPONENTS}")
    if "tokenizer" in chosen:
        train_tokenizer()
    if "clip" in chosen:
        train_clip()
    if "text_encoder" in chosen:
        export_text_encoder()
    if "clip_finetune" in chosen:
        finetune_clip()
    if "classifiers" in chosen:
        train_classifiers()
    if "denoiser" in chosen:
        train_denoiser(args.denoiser_minutes, lr=args.denoiser_lr, resume=args.denoiser_resume,
                       anneal=args.denoiser_anneal)


if __name__ == "__main__":
    main()
