"""How RAZOR's cost grows: time and peak memory vs the number of forget prompts and vs the denoiser's width.

    .venv/bin/python -m benchmarks.scaling --json out/scaling.json

Each point is one fresh process running RAZOR's round 0 on MiniCanvas (self-generated forget/retain images,
gradients, scores, one step with its step-size search: `max_rounds=1`, so every point does the same amount of
algorithm and only the sizes change):
- forget set: 1x, 2x, 4x, 8x forget prompts (2, 4, 8, 16 of style:neon's prompts with their anchors; the retain
  prompts fixed), on the bundled model;
- width: the MiniDiT architecture at 1x, 2x, 4x width (128, 256, 512; 4 heads; random weights: timing does not
  depend on the values), with the bundled text encoder and 2 forget prompts.
It prints a table, fits cost ∝ size^k by least squares on log-log, and plots both series.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.common import run_in_child, save_figure
from razor_core import growth
from razor_core.adapters.minicanvas import MiniCanvasDiffusion
from razor_core.minicanvas import unlearn
from razor_core.minicanvas.denoiser import DEFAULT_CONFIG, MiniDiT
from razor_core.minicanvas.pipeline import load_pipeline
from razor_core.minicanvas.store import atomic_write_bytes
from razor_core.objectives.diffusion import DiffusionObjective, DiffusionSettings

TARGET = ("style", 5)  # neon
FORGET_MULTIPLES = (1, 2, 4, 8)
BASE_FORGET_PROMPTS = 2
WIDTH_MULTIPLES = (1, 2, 4)


def one_point(forget_multiple: int, width_multiple: int) -> dict:
    torch.manual_seed(0)
    pipe = load_pipeline()
    if width_multiple != 1:
        config = {**DEFAULT_CONFIG, "width": DEFAULT_CONFIG["width"] * width_multiple}
        # PyTorch's default init, not the training init: adaLN-zero would make every prediction 0, so concept and
        # anchor would not differ and there would be nothing to forget.
        pipe.denoiser = MiniDiT(**config).eval()
    full = unlearn.forget_set_for(*TARGET)
    n = BASE_FORGET_PROMPTS * forget_multiple
    forget_set = replace(full, forget_prompts=full.forget_prompts[:n], anchor_prompts=full.anchor_prompts[:n])
    start = time.time()
    objective = DiffusionObjective(MiniCanvasDiffusion(pipe), forget_set, DiffusionSettings())
    result = growth.run(objective, growth.RazorConfig(max_rounds=1))
    return {"forget_prompts": n, "width": DEFAULT_CONFIG["width"] * width_multiple,
            "denoiser_params": sum(p.numel() for p in pipe.denoiser.parameters()),
            "seconds": round(time.time() - start, 2), "peak_rss_mb": unlearn.peak_rss_mb(),
            "backward_passes": result.backward_passes}


def fitted_exponent(sizes: list[float], costs: list[float]) -> float:
    """k in cost ∝ size^k (least squares on log-log)."""
    xs, ys = [math.log(s) for s in sizes], [math.log(c) for c in costs]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, (series, size_key, label) in zip(axes, (("forget", "forget_prompts", "forget prompts"),
                                                    ("width", "denoiser_params", "denoiser parameters"))):
        rows = results[series]
        sizes = [r[size_key] for r in rows]
        ax.loglog(sizes, [r["seconds"] for r in rows], "o-",
                  label=f"seconds (k = {results['exponents'][f'{series}_seconds']:.2f})")
        ax.loglog(sizes, [r["peak_rss_mb"] for r in rows], "s--",
                  label=f"peak RSS MB (k = {results['exponents'][f'{series}_peak']:.2f})")
        ax.set_xlabel(label)
        # Ticks at the measured sizes only: log axes' minor labels overlap here.
        ax.set_xticks(sizes, [f"{n / 1e6:.1f} M" if n >= 1e6 else str(n) for n in sizes])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("RAZOR round 0 on MiniCanvas: cost vs size (log-log, fitted exponent k)")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path, help="default: next to --json")
    parser.add_argument("--one", nargs=2, type=int, metavar=("FORGET_MULTIPLE", "WIDTH_MULTIPLE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one_point(*args.one)))
        return
    if args.json is None:
        parser.error("--json OUT.json is required")
    results = {"forget": [run_in_child("benchmarks.scaling", ["--one", str(m), "1"]) for m in FORGET_MULTIPLES],
               "width": [run_in_child("benchmarks.scaling", ["--one", "1", str(m)]) for m in WIDTH_MULTIPLES]}
    results["exponents"] = {
        f"{series}_{cost}": fitted_exponent([r[key] for r in results[series]],
                                            [r["seconds" if cost == "seconds" else "peak_rss_mb"]
                                             for r in results[series]])
        for series, key in (("forget", "forget_prompts"), ("width", "denoiser_params"))
        for cost in ("seconds", "peak")}
    atomic_write_bytes(args.json, (json.dumps(results, indent=1) + "\n").encode())
    plot(results, args.plot or args.json.with_suffix(".png"))
    print("| series | forget prompts | width | denoiser params | seconds | peak RSS MB | backward passes |")
    print("|---|---|---|---|---|---|---|")
    for series in ("forget", "width"):
        for r in results[series]:
            print(f"| {series} | {r['forget_prompts']} | {r['width']} | {r['denoiser_params']} | {r['seconds']} | "
                  f"{r['peak_rss_mb']} | {r['backward_passes']} |")
    print(json.dumps(results["exponents"]))


if __name__ == "__main__":
    main()
