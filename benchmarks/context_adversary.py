"""How much of an edit survives an attacker who sets the denoiser's context: the closed-form context adversary.

    .venv/bin/python -m benchmarks.context_adversary --json out/context_adversary.json
        [--targets style:neon,style:brick,object:star,object:cross] [--methods razor,razor_kv,attack_aware,uce]

A soft prompt, another text encoder or an image prompt reaches a UNet/DiT denoiser only through the contexts its
cross-attention keys and values read. The strongest such attacker picks, for each of the concept's token positions,
the context vector c' that makes the edited key/value projections give what the original ones gave for the concept,
c' = argmin Σ_W ‖W c' − W⁰ c‖² + λ‖c'‖² over every projection at once (`kv_map.reproducing_rows`, RECE's adversary;
`DiffusionObjective.attack_contexts`). This benchmark measures forget progress (the classifier-free signal RAZOR's
stop rule uses: 0 = the original model's predictions, 0.75 ≈ the anchor's) on the validation split, with the plain
forget prompts and with the adversary's contexts, for:
- razor: RAZOR's default (`blocks=denoiser`);
- razor_kv: only its cross-attention key/value part (the closed-form map);
- attack_aware: RAZOR with two attack-aware rounds (`RazorConfig(attack_rounds=2)`);
- uce: benchmarks/uce.py.
It needs no sampling and no classifier: about a minute per target on 2 cores. The default targets are the tuning
split of benchmarks/denoiser_ablation.py.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from benchmarks.common import chosen
from benchmarks.denoiser_ablation import TUNING_TARGETS
from benchmarks.uce import uce_edit
from razor_core import growth
from razor_core.adapters.minicanvas import MiniCanvasDiffusion
from razor_core.kv_map import key_value_weights
from razor_core.minicanvas import unlearn
from razor_core.minicanvas.pipeline import load_pipeline
from razor_core.minicanvas.store import atomic_write_bytes
from razor_core.objectives.diffusion import DiffusionObjective, DiffusionSettings
from razor_core.update import add

METHODS = ("razor", "razor_kv", "attack_aware", "uce")


def measure(target: str, methods: list[str]) -> list[dict]:
    torch.manual_seed(0)  # as unlearn.unlearn_diffusion, so RAZOR's edit is the one it makes
    pipe = load_pipeline()
    domain, index = unlearn.parse_target(target)
    forget_set = unlearn.forget_set_for(domain, index)
    objective = DiffusionObjective(MiniCanvasDiffusion(pipe, blocks="denoiser"), forget_set, DiffusionSettings(seed=0))
    theta0 = objective.base_params()
    key_values = key_value_weights(objective.units())
    deltas = {}
    if {"razor", "razor_kv"} & set(methods):
        deltas["razor"] = growth.run(objective, growth.RazorConfig()).delta
        deltas["razor_kv"] = {k: v for k, v in deltas["razor"].items() if k in key_values}
    if "attack_aware" in methods:
        deltas["attack_aware"] = growth.run(objective, growth.RazorConfig(attack_rounds=2)).delta
    if "uce" in methods:
        deltas["uce"] = {f"denoiser.{k}": v for k, v in uce_edit(pipe, forget_set).items()}
    rows = []
    for method in methods:
        params = add(theta0, deltas[method])
        with torch.no_grad():
            plain = objective.validate(params)
            attacked = objective.under_attack(objective.attack_contexts(params, key_values)).validate(params)
        rows.append({"target": target, "method": method, "forget_progress": plain.forget_progress,
                     "retain_drift": plain.retain_drift, "forget_progress_attacked": attacked.forget_progress})
        print(f"{method:12s} {target:14s} forget progress {plain.forget_progress:.3f}, under the adversary "
              f"{attacked.forget_progress:.3f} (retain drift {plain.retain_drift:.4f})", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default=",".join(TUNING_TARGETS))
    parser.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    methods = chosen(parser, args.methods, METHODS)
    rows = [row for target in args.targets.split(",") for row in measure(target, methods)]
    atomic_write_bytes(args.json, (json.dumps({"rows": rows}, indent=1) + "\n").encode())
    lines = ["| method | target | forget progress | under the context adversary | retain drift |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['target']} | {r['forget_progress']:.3f} | {r['forget_progress_attacked']:.3f} | "
              f"{r['retain_drift']:.4f} |" for r in sorted(rows, key=lambda r: methods.index(r["method"]))]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
