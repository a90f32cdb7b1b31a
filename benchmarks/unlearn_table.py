"""Every MiniCanvas target, one unlearning run each, per method: prints a table and writes JSON.

    .venv/bin/python -m benchmarks.unlearn_table --family diffusion --methods razor,slug [--blocks denoiser] \
        --json out/table.json
    .venv/bin/python -m benchmarks.unlearn_table --family clip --methods razor,slug --json out/clip_table.json

Each run is a fresh process-state unlearn of one concept from the bundled model (the model is reloaded every time),
so targets do not influence each other. Timings are this machine's; compare methods from the same run.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


from razor_core.minicanvas import unlearn
from razor_core.minicanvas.store import atomic_write_bytes

DIFFUSION_CELLS = ("ua", "ira", "cra")
MODEL_ONLY_CELLS = ("ua_model_only", "ira_model_only", "cra_model_only")
CLIP_CELLS = ("forget_acc", "forget_acc_before", "retain_acc", "retain_acc_before", "cross_acc", "cross_acc_before")


def run(family: str, methods: list[str], targets: list[str], blocks: str = "denoiser") -> dict:
    results: dict = {"family": family, "runs": {m: [] for m in methods}}
    if family == "diffusion":
        results["blocks"] = blocks
    for target in targets:
        for method in methods:
            r = (unlearn.unlearn_diffusion(target, method=method, blocks=blocks) if family == "diffusion"
                 else unlearn.unlearn_clip(target, method=method))
            r.pop("round_log", None)
            results["runs"][method].append(r)
            print(f"{method:5s} {target:16s} " + " ".join(
                f"{k}={r[k]:.1f}" for k in (DIFFUSION_CELLS if family == "diffusion" else CLIP_CELLS[::2]))
                  + f" s={r['seconds']:.1f} units={len(r['units'])}", file=sys.stderr, flush=True)
    results["summary"] = summarize(results)
    return results


def summarize(results: dict) -> dict:
    summary = {}
    for method, runs in results["runs"].items():
        row: dict = {}
        for domain in ("style", "object"):
            sel = [r for r in runs if r["target"].startswith(domain)]
            if not sel:
                continue
            keys = DIFFUSION_CELLS + MODEL_ONLY_CELLS if results["family"] == "diffusion" else CLIP_CELLS
            for k in keys:
                row[f"{domain}_{k}"] = statistics.mean(r[k] for r in sel)
        if results["family"] == "diffusion":
            cells = [row[f"{d}_{k}"] for d in ("style", "object") for k in DIFFUSION_CELLS if f"{d}_{k}" in row]
            row["mean_of_cells"] = statistics.mean(cells)
        row["median_seconds"] = statistics.median(r["seconds"] for r in runs)
        row["max_seconds"] = max(r["seconds"] for r in runs)
        row["median_units"] = statistics.median(len(r["units"]) for r in runs)
        summary[method] = row
    return summary


def markdown(results: dict) -> str:
    family = results["family"]
    cells = DIFFUSION_CELLS if family == "diffusion" else CLIP_CELLS
    lines = ["| method | target | " + " | ".join(cells) + " | seconds | units |",
             "|---" * (len(cells) + 4) + "|"]
    for method, runs in results["runs"].items():
        for r in runs:
            lines.append(f"| {method} | {r['target']} | " + " | ".join(f"{r[k]:.1f}" for k in cells)
                         + f" | {r['seconds']:.1f} | {len(r['units'])} |")
    lines.append("")
    lines.append("| method | " + " | ".join(next(iter(results["summary"].values())).keys()) + " |")
    lines.append("|---" * (len(next(iter(results["summary"].values()))) + 1) + "|")
    for method, row in results["summary"].items():
        lines.append(f"| {method} | " + " | ".join(f"{v:.1f}" for v in row.values()) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=("diffusion", "clip"), default="diffusion")
    parser.add_argument("--methods", default="razor,slug")
    parser.add_argument("--targets", default="all", help="comma-separated targets, or 'all'")
    parser.add_argument("--blocks", choices=("denoiser", "text_encoder", "all"), default="denoiser",
                        help="diffusion: the towers whose units are candidates")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    targets = unlearn.list_targets() if args.targets == "all" else args.targets.split(",")
    results = run(args.family, args.methods.split(","), targets, args.blocks)
    atomic_write_bytes(args.json, (json.dumps(results, indent=1) + "\n").encode())
    print(markdown(results))


if __name__ == "__main__":
    main()
