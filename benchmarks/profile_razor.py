"""Where RAZOR's own time goes on MiniCanvas: one diffusion unlearning run per target, split by phase.

    .venv/bin/python -m benchmarks.profile_razor --json out/profile_razor.json

Each target runs in a fresh process under cProfile, from the forget set to the edit (what `benchmarks.compare`
times as `seconds`), and reports the cumulative seconds of each phase:
- self-generation: drawing the forget/retain images with the frozen model;
- frozen predictions: the rest of building the objective (the frozen model's predictions and targets);
- gradients: forget/retain gradients (round 0 and every growth round) and the mismatch gradients of each growth
  round's edit set;
- preconditioner: round 0's pass over the retain data that records the inputs of the layers its proposals edit
  (growth rounds record theirs during the mismatch gradient's pass, counted under gradients);
- probes: the validation forward passes of the step-size searches (their count too; the retain half of a probe is
  computed only when the search needs it);
- other: scores, directions, bookkeeping.
Profiling adds a little overhead, so the total is slightly above an unprofiled run.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import statistics
import time
from pathlib import Path

import torch

from benchmarks.common import run_in_child
from razor_core import growth
from razor_core.adapters.minicanvas import MiniCanvasDiffusion
from razor_core.minicanvas import unlearn
from razor_core.minicanvas.pipeline import load_pipeline
from razor_core.minicanvas.store import atomic_write_bytes
from razor_core.objectives.diffusion import DiffusionObjective, DiffusionSettings

DEFAULT_TARGETS = ("style:neon", "style:sunset", "object:star")
# phase -> (module file suffix, names of the functions) whose cumulative time it is
PHASES = {
    "self_generation": ("adapters/minicanvas.py", ("sample",)),
    "objective": ("objectives/diffusion.py", ("__init__",)),
    "gradients": ("razor_core/gradients.py", ("compute_gradients", "mismatch_gradients")),
    "preconditioner": ("razor_core/preconditioner.py", ("retain_input_moments",)),
    "probes": ("razor_core/update.py", ("__call__", "retain_drift")),
}


def _cumulative(stats: pstats.Stats, file_suffix: str, names: tuple[str, ...]) -> tuple[float, int]:
    seconds, calls = 0.0, 0
    for (filename, _line, func), (_cc, ncalls, _tt, cumtime, _callers) in stats.stats.items():
        if func in names and filename.endswith(file_suffix):
            seconds, calls = seconds + cumtime, calls + ncalls
    return seconds, calls


def profile_one(target: str) -> dict:
    torch.manual_seed(0)
    pipe = load_pipeline()
    forget_set = unlearn.forget_set_for(*unlearn.parse_target(target))
    profiler = cProfile.Profile()
    start = time.time()
    profiler.enable()
    objective = DiffusionObjective(MiniCanvasDiffusion(pipe), forget_set, DiffusionSettings())
    result = growth.run(objective, growth.RazorConfig())
    profiler.disable()
    total = time.time() - start
    stats = pstats.Stats(profiler)
    phases = {phase: _cumulative(stats, *where) for phase, where in PHASES.items()}
    seconds = {phase: round(s, 2) for phase, (s, _) in phases.items()}
    seconds["frozen_predictions"] = round(seconds.pop("objective") - seconds["self_generation"], 2)
    seconds["other"] = round(total - sum(seconds.values()), 2)
    probes = _cumulative(stats, "razor_core/update.py", ("__call__",))[1]  # not the on-demand retain halves
    return {"target": target, "total_seconds": round(total, 2), "phase_seconds": seconds,
            "probes": probes, "rounds": len(result.rounds), "units": len(result.units),
            "backward_passes": result.backward_passes, "forget_progress": result.rounds[-1].forget_progress,
            "peak_rss_mb": unlearn.peak_rss_mb()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help="comma-separated MiniCanvas targets")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--one", metavar="TARGET", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(profile_one(args.one)))
        return
    if args.json is None:
        parser.error("--json OUT.json is required")
    runs = [run_in_child("benchmarks.profile_razor", ["--one", t]) for t in args.targets.split(",")]
    phases = list(runs[0]["phase_seconds"])
    summary = {"median_total_seconds": statistics.median(r["total_seconds"] for r in runs),
               "median_phase_seconds": {p: statistics.median(r["phase_seconds"][p] for r in runs) for p in phases},
               "median_probes": statistics.median(r["probes"] for r in runs),
               "median_peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs)}
    atomic_write_bytes(args.json, (json.dumps({"runs": runs, "summary": summary}, indent=1) + "\n").encode())
    head = ["total", *phases, "probes", "rounds", "backward", "peak MB"]
    print("| target | " + " | ".join(head) + " |")
    print("|---" * (len(head) + 1) + "|")
    for r in runs:
        cells = [r["total_seconds"], *(r["phase_seconds"][p] for p in phases), r["probes"], r["rounds"],
                 r["backward_passes"], r["peak_rss_mb"]]
        print(f"| {r['target']} | " + " | ".join(str(c) for c in cells) + " |")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
