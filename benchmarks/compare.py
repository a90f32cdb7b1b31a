"""RAZOR vs SLUG, UCE and ESD-x on the MiniCanvas diffusion model, side by side: quality, time, memory, storage.

    .venv/bin/python -m benchmarks.compare --quick --json out/compare_quick.json      # ~15 min on 2 cores
    .venv/bin/python -m benchmarks.compare --json out/compare.json                    # every target

Every (method, target) runs in a fresh Python process, so that its peak resident memory is its own: the process
loads the bundled model, unlearns one concept, reads its peak RSS (model, data, gradients, optimiser state; before
any evaluation image is drawn), then applies the edit and evaluates it with UnlearnCanvas's metrics. The inference
peak is measured the same way on a process that loads the model and draws one batch of 8 images (what a KSampler
batch costs). `seconds` is the method's own work: RAZOR/SLUG from the forget set to the edit (self-generated images,
gradients, growth), UCE its text-encoder pass and solves, ESD-x its training loop. `--quick` runs a fixed subset:
the targets in QUICK_TARGETS, judged on 2 evaluation seeds (128 images per target) instead of 5.

`razor` is RAZOR's default (the edit in the denoiser, `blocks=denoiser`); `razor_text_encoder` is RAZOR on the text
encoder alone (`blocks=text_encoder`, the default the denoiser edit replaced), so the ratio of their median seconds
per concept is measured under the same load. Baselines (benchmarks/uce.py, benchmarks/esd.py) follow their papers;
ESD-x trains on the concept's name as the paper does ("neon style", "a star": the single-domain phrasing MiniCanvas
knows).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save

from benchmarks.common import chosen, run_in_child, save_figure
from razor_core.minicanvas import evaluate, text, unlearn
from razor_core.minicanvas.pipeline import load_classifier, load_pipeline
from razor_core.minicanvas.store import atomic_write_bytes

METHODS = ("razor", "razor_text_encoder", "slug", "uce", "esd")
CELLS = ("ua", "ira", "cra")
QUICK_TARGETS = ("style:neon", "style:sunset", "object:star")
QUICK_EVAL_SEEDS = (188, 288)
INFERENCE_BATCH = 8


def _concept_name(target: str) -> str:
    domain, index = unlearn.parse_target(target)
    if domain == "style":
        return text.STYLE_ONLY_TEMPLATES[1].format(style=unlearn.data.STYLES[index])
    return text.OBJECT_ONLY_TEMPLATES[1].format(object=unlearn.data.OBJECTS[index])


def _baseline(method: str, target: str, eval_seeds: tuple[int, ...]) -> dict:
    from benchmarks.esd import esd_x_edit
    from benchmarks.uce import uce_edit

    domain, index = unlearn.parse_target(target)
    torch.manual_seed(0)
    pipe = load_pipeline()
    forget_set = unlearn.forget_set_for(domain, index)
    start = time.time()
    if method == "uce":
        deltas, backward = uce_edit(pipe, forget_set), 0
    else:
        deltas, stats = esd_x_edit(pipe, forget_set, prompts=(_concept_name(target),))
        backward = stats["backward_passes"]
    seconds, peak = time.time() - start, unlearn.peak_rss_mb()
    params = dict(pipe.denoiser.named_parameters())
    with torch.no_grad():
        for name, delta in deltas.items():
            params[name].add_(delta)
    answers = evaluate.answer_set(pipe.sample, load_classifier("style"), load_classifier("object"), eval_seeds)
    return {"target": target, "method": method, **evaluate.unlearning_metrics(answers, domain, index),
            "seconds": round(seconds, 2), "peak_rss_mb": peak, "backward_passes": backward,
            "edit_bytes": len(save({k: v.contiguous() for k, v in deltas.items()})),
            "units": sorted({k.rsplit(".", 1)[0] for k in deltas})}


def run_one(method: str, target: str, eval_seeds: tuple[int, ...]) -> dict:
    """One unlearning run in this process (called in a child process by `compare`)."""
    if method in ("razor", "slug"):
        result = unlearn.unlearn_diffusion(target, method=method, eval_seeds=eval_seeds)
    elif method == "razor_text_encoder":
        result = {**unlearn.unlearn_diffusion(target, blocks="text_encoder", eval_seeds=eval_seeds), "method": method}
    else:
        return _baseline(method, target, eval_seeds)
    result.pop("round_log", None)
    return result


def inference_peak() -> dict:
    """Load the model and draw one batch: the memory a user pays just to sample."""
    pipe = load_pipeline()
    start = time.time()
    pipe.sample(["a star in neon style"] * INFERENCE_BATCH, list(range(INFERENCE_BATCH)))
    return {"peak_rss_mb": unlearn.peak_rss_mb(), "seconds": round(time.time() - start, 2)}


def model_bytes() -> int:
    """Bytes of the weights the methods edit (denoiser + text encoder, float32)."""
    pipe = load_pipeline()
    return sum(p.numel() * p.element_size() for m in (pipe.denoiser, pipe.text_encoder) for p in m.parameters())


def _child(args: list[str]) -> dict:
    return run_in_child("benchmarks.compare", args)


def summarize(runs: dict[str, list[dict]], inference: dict, weights_bytes: int) -> dict:
    summary: dict = {}
    for method, rows in runs.items():
        row: dict = {}
        for domain in ("style", "object"):
            sel = [r for r in rows if r["target"].startswith(domain)]
            for cell in CELLS:
                if sel:
                    row[f"{domain}_{cell}"] = statistics.mean(r[cell] for r in sel)
        row["mean_of_cells"] = statistics.mean(v for k, v in row.items() if k.endswith(CELLS))
        for key in ("seconds", "peak_rss_mb", "edit_bytes", "backward_passes"):
            row[key] = statistics.mean(r[key] for r in rows)
        row["median_seconds"] = statistics.median(r["seconds"] for r in rows)
        summary[method] = row
    razor = summary.get("razor")
    if razor:
        ratios = {f"razor_seconds / {m}_seconds": razor["seconds"] / summary[m]["seconds"]
                  for m in ("esd", "slug", "uce") if m in summary}
        if "razor_text_encoder" in summary:  # the edit in the MODEL against the text-encoder edit it replaced
            ratios["razor_median_seconds / razor_text_encoder_median_seconds"] = (
                razor["median_seconds"] / summary["razor_text_encoder"]["median_seconds"])
        ratios["razor_peak / inference_peak"] = razor["peak_rss_mb"] / inference["peak_rss_mb"]
        ratios["razor_edit_bytes / model_bytes"] = razor["edit_bytes"] / weights_bytes
        summary["ratios"] = ratios
    return summary


def markdown(results: dict) -> str:
    summary = results["summary"]
    methods = [m for m in METHODS if m in summary]
    keys = [f"{d}_{c}" for d in ("style", "object") for c in CELLS if f"{d}_{c}" in summary[methods[0]]]
    head = keys + ["mean_of_cells", "seconds", "peak_rss_mb", "edit_bytes", "backward_passes"]
    lines = ["| method | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for m in methods:
        lines.append(f"| {m} | " + " | ".join(f"{summary[m][k]:.1f}" if k != "edit_bytes" else
                                             f"{summary[m][k]:.0f}" for k in head) + " |")
    lines.append("")
    lines.append(f"inference peak {results['inference']['peak_rss_mb']:.0f} MB; model {results['model_bytes']} bytes")
    for name, value in summary.get("ratios", {}).items():
        lines.append(f"{name} = {value:.4g}")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method in (m for m in METHODS if m in results["summary"]):
        row = results["summary"][method]
        ax.scatter(row["seconds"], row["mean_of_cells"], s=60)
        # The two RAZOR points sit close together: one label above, one below.
        ax.annotate(method, (row["seconds"], row["mean_of_cells"]), textcoords="offset points",
                    xytext=(6, -12) if method == "razor" and "razor_text_encoder" in results["summary"] else (6, 4))
    ax.set_xscale("log")
    ax.set_xlabel("seconds per concept (mean, log scale)")
    ax.set_ylabel("mean of UA/IRA/CRA cells (%)")
    ax.set_title("MiniCanvas: quality vs time, one point per method")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"targets {', '.join(QUICK_TARGETS)}, 2 eval seeds")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--targets", default=None, help="comma-separated targets (default: all, or the quick set)")
    parser.add_argument("--json", type=Path, help="where to write the results")
    parser.add_argument("--plot", type=Path, help="quality-vs-time plot (default: next to --json)")
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "TARGET"), help=argparse.SUPPRESS)
    parser.add_argument("--inference", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-bytes", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--eval-seeds", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    seeds = tuple(int(s) for s in args.eval_seeds.split(",")) if args.eval_seeds else (
        QUICK_EVAL_SEEDS if args.quick else evaluate.EVAL_SEEDS)
    if args.one:  # child process: one run, one JSON line
        print(json.dumps(run_one(*args.one, seeds)))
        return
    if args.inference:
        print(json.dumps(inference_peak()))
        return
    if args.model_bytes:
        print(json.dumps(model_bytes()))
        return
    if args.json is None:
        parser.error("--json OUT.json is required")
    methods = chosen(parser, args.methods, METHODS)
    targets = args.targets.split(",") if args.targets else list(QUICK_TARGETS if args.quick else
                                                                unlearn.list_targets())
    seed_arg = ["--eval-seeds", ",".join(map(str, seeds))]
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    results = {"machine": f"{torch.get_num_threads()} threads", "targets": targets, "eval_seeds": list(seeds),
               "inference": _child(["--inference"]), "model_bytes": _child(["--model-bytes"]), "runs": runs}
    for done, target in enumerate(targets, 1):
        for method in methods:  # methods interleaved per target: they see the same machine load
            r = _child(["--one", method, target, *seed_arg])
            runs[method].append(r)
            print(f"{method:5s} {target:16s} " + " ".join(f"{k}={r[k]:.1f}" for k in CELLS)
                  + f" s={r['seconds']:.1f} peak={r['peak_rss_mb']:.0f}MB", file=sys.stderr, flush=True)
        # Rewritten after every target: a full run takes over an hour, and one cut short keeps what it finished.
        results["completed_targets"] = done
        results["summary"] = summarize(runs, results["inference"], results["model_bytes"])
        atomic_write_bytes(args.json, (json.dumps(results, indent=1) + "\n").encode())
    plot(results, args.plot or args.json.with_suffix(".png"))
    print(markdown(results))


if __name__ == "__main__":
    main()
