"""Repeated unlearning in one ComfyUI server: does resident memory keep growing from prompt to prompt?

    .venv/bin/python -m benchmarks.repeated_runs --runs 50 --json out/repeated_runs.json

Starts a real ComfyUI server on CPU with caching off (`--cache-none`: every prompt reloads the demo model and
recomputes everything, as a server handling one takedown request after another would), then queues `--runs`
unlearning prompts on the MiniCanvas demo model, each for another concept (the 8 styles and 8 objects in turn):
Load Forget Set -> Score Heads -> Grow Edit Set -> Apply RAZOR Edit -> KSampler on the unlearned model, and Save
Unlearned Model (edit file). Small settings (two forget prompts, three retain prompts, 4 sampler steps, one round)
keep a run to seconds; what is measured is what a run leaves behind. After every prompt it reads the server's
resident memory (VmRSS). The growth is the largest RSS of the last WINDOW runs over the largest of the WINDOW runs
after warm-up, minus 1 (tests/test_comfy_repeated_runs.py asserts it stays within 5% over 50 runs).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from benchmarks.common import save_figure
from razor_core.minicanvas import data
from tests.comfy_server import ComfyServer, start_server
from tests.razor_graphs import small_unlearning_chain

WARM_UP = 5   # runs before the baseline: first loads, allocator pools and torch's caches fill up
WINDOW = 5    # runs per measuring window (baseline right after warm-up, and the last ones)


def concept_prompt(index: int) -> dict:
    """The unlearning chain for the index-th concept (styles, then objects, cycling)."""
    concepts = [("style", s) for s in data.STYLES] + [("object", o) for o in data.OBJECTS]
    kind, concept = concepts[index % len(concepts)]
    if kind == "style":
        others = [s for s in data.STYLES if s != concept][:3]
        forget = f"a star in {concept} style => a star\na heart in {concept} style => a heart"
        retain = "\n".join(f"a star in {s} style" for s in others)
    else:
        others = [o for o in data.OBJECTS if o != concept][:3]
        forget = f"a {concept} in neon style => neon style\na {concept} in brick style => brick style"
        retain = "\n".join(f"a {o} in neon style" for o in others)
    return {
        **small_unlearning_chain(concept, kind, forget, retain, seed=index, filename_prefix=f"razor/repeat_{concept}"),
        "sample": {"class_type": "KSampler", "inputs": {
            "model": ["apply", 0], "positive": ["positive", 0], "negative": ["negative", 0],
            "latent_image": ["latent", 0], "seed": index, "steps": 4, "cfg": 4.0, "sampler_name": "euler",
            "scheduler": "simple", "denoise": 1.0}},
        "positive": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["apply", 1],
                                                                "text": forget.split(" =>")[0]}},
        "negative": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["apply", 1], "text": ""}},
        "preview": {"class_type": "PreviewAny", "inputs": {"source": ["sample", 0]}},
    }


def run_series(server: ComfyServer, runs: int, log=print) -> dict:
    """Queue `runs` unlearning prompts one after another; RSS (MB) and seconds after each."""
    if runs < WARM_UP + 2 * WINDOW:
        raise ValueError(f"use at least {WARM_UP + 2 * WINDOW} runs (warm-up {WARM_UP}, two windows of {WINDOW})")
    rss, seconds = [], []
    for i in range(runs):
        start = time.time()
        server.run(concept_prompt(i), timeout=600)
        seconds.append(round(time.time() - start, 2))
        rss.append(round(server.rss_mb(), 1))
        log(f"run {i + 1:3d}: {seconds[-1]:6.1f} s  RSS {rss[-1]:7.1f} MB")
    baseline = max(rss[WARM_UP:WARM_UP + WINDOW])
    final = max(rss[-WINDOW:])
    return {"runs": runs, "rss_mb": rss, "seconds": seconds, "warm_up": WARM_UP, "window": WINDOW,
            "baseline_rss_mb": baseline, "final_rss_mb": final, "growth": round(final / baseline - 1, 4)}


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    runs = range(1, result["runs"] + 1)
    ax.plot(runs, result["rss_mb"], marker=".")
    ax.axvspan(result["warm_up"] + 0.5, result["warm_up"] + result["window"] + 0.5, alpha=0.15, label="baseline")
    ax.axhline(result["baseline_rss_mb"] * 1.05, color="red", linestyle="--", label="baseline + 5%")
    ax.set_xlabel("unlearning prompt (one server, cache off)")
    ax.set_ylabel("server RSS (MB)")
    ax.set_title(f"Repeated runs: growth {100 * result['growth']:+.1f}% after warm-up")
    ax.legend(loc="lower right")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--json", type=Path, required=True, help="where to write the curve")
    parser.add_argument("--plot", type=Path, help="RSS plot (default: next to --json)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="razor_repeat_") as base:
        server = start_server(Path(base), extra_args=("--cache-none",))
        try:
            result = run_series(server, args.runs)
        finally:
            server.stop()
    print(f"baseline {result['baseline_rss_mb']:.0f} MB (runs {WARM_UP + 1}-{WARM_UP + WINDOW}), last {WINDOW} runs "
          f"{result['final_rss_mb']:.0f} MB: growth {100 * result['growth']:+.2f}%; median run "
          f"{sorted(result['seconds'])[len(result['seconds']) // 2]:.1f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    plot(result, args.plot or args.json.with_suffix(".png"))


if __name__ == "__main__":
    main()
