"""Which choice makes RAZOR forget in the denoiser: one unlearning run per (variant, target), printed as a table.

    .venv/bin/python -m benchmarks.denoiser_ablation --json out/denoiser_ablation.json
        [--targets style:neon,style:brick,object:star,object:cross] [--variants ...] [--eval-seeds 188,288]
        [--drift-tolerance 0.02]

Variants, each adding one choice to the one before (RazorConfig fields in brackets):
- text_encoder: the text encoder's units only, one unit per growth round (the edit the pack made before its edits
  moved into the MODEL);
- denoiser_gradient: the denoiser only, its cross-attention keys/values as units but stepped by the preconditioned
  gradient like every other unit (kv_step="gradient"), one unit per round;
- key_value_map: the keys/values step towards their closed-form map, and growth ends when the map is spent
  (kv_step="closed_form", gradient_after_map=False);
- default: then gradient rounds step the whole set past the anchor, adding eight units per round (the defaults);
- attack_aware: then two attack-aware rounds (attack_rounds=2): the closed-form context adversary's contexts join the
  key/value map (growth.attack_aware_rounds).
The default targets are the tuning split the defaults were chosen on (two styles and two objects, an easy and a hard
one each); the reported table (benchmarks.unlearn_table) covers every target. Metrics as `unlearn` computes them,
on the evaluation seeds given (default 2 of UnlearnCanvas's 5, to keep the run near 20 minutes on 2 cores).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from benchmarks.common import chosen
from razor_core.growth import RazorConfig
from razor_core.minicanvas import unlearn
from razor_core.minicanvas.store import atomic_write_bytes

TUNING_TARGETS = ("style:neon", "style:brick", "object:star", "object:cross")
VARIANTS: dict[str, tuple[str, RazorConfig]] = {  # name: (blocks, config)
    "text_encoder": ("text_encoder", RazorConfig(units_per_round=1)),
    "denoiser_gradient": ("denoiser", RazorConfig(kv_step="gradient", units_per_round=1)),
    "key_value_map": ("denoiser", RazorConfig(gradient_after_map=False)),
    "default": ("denoiser", RazorConfig()),
    "attack_aware": ("denoiser", RazorConfig(attack_rounds=2)),
}
CELLS = ("ua", "ira", "cra", "ua_model_only", "forget_progress", "seconds")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default=",".join(TUNING_TARGETS))
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    parser.add_argument("--eval-seeds", default="188,288")
    parser.add_argument("--drift-tolerance", type=float, default=None,
                        help="every variant's retain drift tolerance (default: RazorConfig's)")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    variants = chosen(parser, args.variants, VARIANTS, "variant")
    seeds = tuple(int(s) for s in args.eval_seeds.split(","))
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for target in args.targets.split(","):
        for name in variants:
            blocks, config = VARIANTS[name]
            if args.drift_tolerance is not None:
                config = replace(config, drift_tolerance=args.drift_tolerance)
            r = unlearn.unlearn_diffusion(target, blocks=blocks, config=config, eval_seeds=seeds)
            r.pop("round_log", None)
            runs[name].append(r)
            print(f"{name:18s} {target:16s} " + " ".join(f"{k}={r[k]:.1f}" for k in CELLS[:4])
                  + f" fp={r['forget_progress']:.3f} s={r['seconds']:.1f} units={len(r['units'])}",
                  file=sys.stderr, flush=True)
    results = {"targets": args.targets.split(","), "eval_seeds": list(seeds), "runs": runs}
    atomic_write_bytes(args.json, (json.dumps(results, indent=1) + "\n").encode())
    lines = ["| variant | target | UA | IRA | CRA | UA, MODEL only | forget progress | seconds | units |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, rows in runs.items():
        for r in rows:
            lines.append(f"| {name} | {r['target']} | " + " | ".join(f"{r[k]:.1f}" for k in CELLS[:4])
                         + f" | {r['forget_progress']:.3f} | {r['seconds']:.1f} | {len(r['units'])} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
