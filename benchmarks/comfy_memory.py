"""RAZOR inside ComfyUI at SD1.5's size, on the CPU: the server's peak resident memory while it runs the shipped
workflow, against its peak while it only draws with the stock nodes.

    .venv/bin/python -m benchmarks.comfy_memory --json out/comfy_memory.json

The checkpoint is SD1.5 with random weights (tests/tiny_checkpoints.py, family `sd15_full`: the whole 860 M-parameter
UNet, CLIP-L and the VAE as float16, 2.0 GB, written to a temporary folder and deleted afterwards); the values do not
matter for memory. Each measurement starts a fresh ComfyUI server, so each peak (the process's VmHWM) is its own:
- inference: the workflow's sampling chain for the original model alone (Load Checkpoint, CLIP Text Encode,
  KSampler, VAE Decode, Preview Image);
- razor: the whole of workflows/sd15_remove_style.json, shrunk as the CPU tests shrink it (64x64 images, 4 sampler
  steps, two forget and two retain prompts, two rounds): both samplers, Score Heads, Grow Edit Set, Apply RAZOR Edit
  and the edit file.
On a CPU, ComfyUI holds the UNet in float32 (3.4 GB) and CLIP-L in float16 (computing in float32). Activations at
64x64 are small, so the difference between the two peaks is what RAZOR keeps besides the model: its weight aliases
and gradients.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from razor_core.minicanvas.store import atomic_write_bytes
from tests.comfy_server import ComfyServer, start_server
from tests.razor_graphs import cpu_prompt, one_of, sampler_chain, workflow_path
from tests.tiny_checkpoints import write_tiny_checkpoint

FAMILY = "sd15"
EDIT_PREFIX = "razor/memory_benchmark"  # where the workflow saves its edit file (output folder)
TIMEOUT_S = 3600


def peak_rss_mb(server: ComfyServer) -> float:
    """The server process's peak resident memory so far (VmHWM)."""
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def upstream(prompt: dict, node: str) -> dict:
    """`node` and every node it reads from, transitively."""
    graph, todo = {}, [node]
    while todo:
        key = todo.pop()
        if key not in graph:
            graph[key] = prompt[key]
            todo += [value[0] for value in prompt[key]["inputs"].values() if isinstance(value, list)]
    return graph


def inference_graph(prompt: dict) -> dict:
    decode = sampler_chain(prompt)["original"]["decode"]
    return {**upstream(prompt, decode), "preview": {"class_type": "PreviewImage", "inputs": {"images": [decode, 0]}}}


def measure(checkpoint: Path, which: str) -> dict:
    """One fresh server with `checkpoint` under the workflow's checkpoint name; runs the `which` graph."""
    workflow = json.loads(workflow_path(FAMILY).read_text())
    ckpt_name, = next(n for n in workflow["nodes"] if n["type"] == "CheckpointLoaderSimple")["widgets_values"]
    with tempfile.TemporaryDirectory(prefix="razor_comfy_memory_") as tmp:
        base = Path(tmp)
        (base / "models" / "checkpoints").mkdir(parents=True)
        os.symlink(checkpoint, base / "models" / "checkpoints" / ckpt_name)
        server = start_server(base)
        try:
            idle = peak_rss_mb(server)
            prompt = cpu_prompt(server, FAMILY, EDIT_PREFIX)
            graph = inference_graph(prompt) if which == "inference" else prompt
            start = time.time()
            outputs = server.run(graph, timeout=TIMEOUT_S)
            seconds = time.time() - start
            result = {"graph": which, "nodes": len(graph), "seconds": round(seconds, 1),
                      "idle_rss_mb": round(idle, 1), "peak_rss_mb": round(peak_rss_mb(server), 1)}
            if which == "razor":
                report = outputs[one_of(prompt, "PreviewAny")]["text"][0]
                result["units"] = next(line for line in report.splitlines() if line.startswith("edited units:"))
                edit_file, = (base / "output").glob(f"{EDIT_PREFIX}_*.safetensors")
                result["edit_bytes"] = edit_file.stat().st_size
            return result
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="razor_sd15_full_") as tmp:
        checkpoint = write_tiny_checkpoint("sd15_full", Path(tmp) / "sd15_full.safetensors")
        runs = [measure(checkpoint, which) for which in ("inference", "razor")]
        checkpoint_bytes = checkpoint.stat().st_size
    checkpoint_gb = checkpoint_bytes / 2**30
    inference, razor = runs
    results = {"checkpoint": "SD1.5 layout, random weights, float16", "checkpoint_gb": round(checkpoint_gb, 3),
               "runs": runs, "razor_peak / inference_peak": round(razor["peak_rss_mb"] / inference["peak_rss_mb"], 3),
               "edit_bytes / checkpoint_bytes": round(razor["edit_bytes"] / checkpoint_bytes, 5)}
    atomic_write_bytes(args.json, (json.dumps(results, indent=1) + "\n").encode())
    print(f"SD1.5-size checkpoint ({checkpoint_gb:.2f} GB) in ComfyUI on the CPU")
    print("| graph | nodes | seconds | idle RSS MB | peak RSS MB |")
    print("|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['graph']} | {r['nodes']} | {r['seconds']} | {r['idle_rss_mb']} | {r['peak_rss_mb']} |")
    print(f"razor_peak / inference_peak = {results['razor_peak / inference_peak']}; edit file "
          f"{razor['edit_bytes'] / 2**20:.2f} MiB = {100 * results['edit_bytes / checkpoint_bytes']:.3f} % of the "
          f"checkpoint ({razor['units']})")


if __name__ == "__main__":
    main()
