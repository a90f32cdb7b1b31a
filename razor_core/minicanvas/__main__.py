"""MiniCanvas command line.

    .venv/bin/python -m razor_core.minicanvas check --json OUT.json   evaluate the bundled models
    .venv/bin/python -m razor_core.minicanvas grid --out grid.png      sample the styles x objects grid
    .venv/bin/python -m razor_core.minicanvas unlearn --target style:neon [--family diffusion|clip]
        [--method razor|slug] [--blocks denoiser|text_encoder|all] [--attack-rounds N] [--seed N] --json OUT.json
                                                                         forget one concept and measure it
    .venv/bin/python -m razor_core.minicanvas unlearn --list-targets
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import data, evaluate, store
from .classifier import to_model_input, to_uint8
from .pipeline import load_classifier, load_clip, load_pipeline

HELDOUT_PER_CELL = 10


def check() -> dict[str, object]:
    """Quality of every bundled model, measured on held-out real images and held-out generation seeds."""
    start = time.time()
    images, styles, objects = data.build_split("heldout", HELDOUT_PER_CELL)
    real = to_model_input(torch.from_numpy(images))
    style_clf, object_clf = load_classifier("style"), load_classifier("object")
    result: dict[str, object] = {
        "n_styles": len(data.STYLES),
        "n_objects": len(data.OBJECTS),
        "classifier_style_acc_real": float((evaluate.classify(style_clf, real) == styles).mean()),
        "classifier_object_acc_real": float((evaluate.classify(object_clf, real) == objects).mean()),
    }
    clip_model, tokenizer = load_clip()
    for domain, labels in (("style", styles), ("object", objects)):
        pred = evaluate.clip_zero_shot(clip_model, tokenizer, real, labels, domain)
        result[f"clip_zero_shot_{domain}_acc"] = float((pred == labels).mean())
    pipe = load_pipeline()
    answers = evaluate.answer_set(pipe.sample, style_clf, object_clf)
    result.update(evaluate.accuracy_report(answers))
    manifest = store.read_manifest()
    result["weights_bytes"] = sum(entry["bytes"] for entry in manifest["files"].values())
    result["seconds"] = round(time.time() - start, 1)
    return result


def save_grid(path: Path, seed: int = 0) -> None:
    """One generated image per (style, object) cell: rows are styles, columns objects."""
    from PIL import Image

    pipe = load_pipeline()
    prompts = [data.caption(s, o) for s in data.STYLES for o in data.OBJECTS]
    imgs = to_uint8(pipe.sample(prompts, [seed + i for i in range(len(prompts))])).numpy()
    n_s, n_o, size = len(data.STYLES), len(data.OBJECTS), data.IMAGE_SIZE
    canvas = np.full((n_s * (size + 2), n_o * (size + 2), 3), 255, np.uint8)
    for k, img in enumerate(imgs):
        r, c = divmod(k, n_o)
        canvas[r * (size + 2):r * (size + 2) + size, c * (size + 2):c * (size + 2) + size] = img
    Image.fromarray(canvas).resize((canvas.shape[1] * 3, canvas.shape[0] * 3), Image.Resampling.NEAREST).save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m razor_core.minicanvas", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_check = sub.add_parser("check", help="evaluate the bundled MiniCanvas models")
    p_check.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p_grid = sub.add_parser("grid", help="sample one image per style x object cell into a PNG")
    p_grid.add_argument("--out", type=Path, required=True)
    p_grid.add_argument("--seed", type=int, default=0)
    p_unlearn = sub.add_parser("unlearn", help="forget one concept from a bundled model and measure UA/IRA/CRA")
    p_unlearn.add_argument("--target", help="style:NAME or object:NAME (see --list-targets)")
    p_unlearn.add_argument("--family", choices=("diffusion", "clip"), default="diffusion")
    p_unlearn.add_argument("--method", choices=("razor", "slug"), default="razor")
    p_unlearn.add_argument("--seed", type=int, default=0)
    p_unlearn.add_argument("--blocks", choices=("denoiser", "text_encoder", "all"), default="denoiser",
                           help="diffusion: which towers' units are candidates (default: the denoiser, so the edit "
                                "lives in the MODEL); the JSON's *_model_only metrics apply only the denoiser's part")
    p_unlearn.add_argument("--attack-rounds", type=int, default=0,
                           help="diffusion, RAZOR: attack-aware rounds after the growth (default 0; they harden the "
                                "key/value edit against context attacks at some cost in retention, docs/denoiser.md)")
    p_unlearn.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p_unlearn.add_argument("--list-targets", action="store_true", help="print the concept names and exit")
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            result = check()
            print(json.dumps(result, indent=1))
            if args.json:
                store.atomic_write_bytes(args.json, (json.dumps(result, indent=1) + "\n").encode())
        elif args.command == "grid":
            save_grid(args.out, args.seed)
            print(f"wrote {args.out}")
        elif args.command == "unlearn":
            from . import unlearn

            if args.list_targets:
                print("\n".join(unlearn.list_targets()))
                return 0
            if not args.target:
                parser.error("unlearn needs --target (or --list-targets)")
            if args.family == "diffusion":
                config = unlearn.growth.RazorConfig(method=args.method, attack_rounds=args.attack_rounds)
                result = unlearn.unlearn_diffusion(args.target, method=args.method, seed=args.seed,
                                                   blocks=args.blocks, config=config)
            else:
                result = unlearn.unlearn_clip(args.target, method=args.method, seed=args.seed)
            print(json.dumps({k: v for k, v in result.items() if k != "round_log"}, indent=1))
            if args.json:
                store.atomic_write_bytes(args.json, (json.dumps(result, indent=1) + "\n").encode())
    except (store.WeightsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
