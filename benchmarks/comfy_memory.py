"""RAZOR inside ComfyUI at full size, on the CPU: the server's peak resident memory while it runs the shipped workflow,
against its peak while it only draws with the stock nodes.

    .venv/bin/python -m benchmarks.comfy_memory --family sd15 --json out/comfy_memory_sd15.json
    .venv/bin/python -m benchmarks.comfy_memory --family sdxl --bf16-unet --json out/comfy_memory_sdxl.json
    .venv/bin/python -m benchmarks.comfy_memory --family flux_dev --depth 1 --weight-dtype fp8_e4m3fn \
        --json out/comfy_memory_flux1_fp8.json

The checkpoints have random weights (the values do not matter for memory), written as float16 to a temporary folder
and deleted afterwards: `sd15` is SD1.5's whole 860 M-parameter UNet with CLIP-L and the VAE (2.0 GB,
tests/tiny_checkpoints.py), `sdxl` SDXL base's 2.57 B-parameter UNet with CLIP-L, CLIP-G and the VAE (6.9 GB,
tests/tiny_families.py); `flux_dev` Flux-dev's full-width blocks at a reduced depth (`--depth` double-stream
blocks and twice as many single-stream ones, as Flux-dev's 19 and 38), loaded in parts with CLIP-L in place of T5
(tests/tiny_families.py), for the per-block cost; `--weight-dtype` is Load Diffusion Model's (fp8_e4m3fn: the blocks
stored in fp8 and computed in float32). Each measurement starts a fresh ComfyUI server, so each peak (the process's
VmHWM) is its own:
- inference: the workflow's sampling chain for the original model alone (Load Checkpoint, CLIP Text Encode,
  KSampler, VAE Decode, Preview Image);
- razor: the whole of workflows/<family>_remove_style.json, shrunk as the CPU tests shrink it (64x64 images, 4
  sampler steps, two forget and two retain prompts, two rounds): both samplers, Score Heads, Grow Edit Set, Apply
  RAZOR Edit and the edit file.
On a CPU, ComfyUI holds the UNet in float32 and the CLIPs in float16 (computing in float32). Activations at 64x64 are
small, so the difference between the two peaks is what RAZOR keeps besides the model: its gradients (within the
nodes' gradient budget, a quarter of the UNet's bytes) and the edit.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

from razor_core.minicanvas.store import atomic_write_bytes
from tests.comfy_server import ComfyServer, start_server
from tests.razor_graphs import cpu_prompt, family_files, family_prompt, one_of, sampler_chain, workflow_path
from tests.tiny_checkpoints import write_tiny_checkpoint
from tests.tiny_families import FAMILIES, write_family_files, write_sdxl_checkpoint

CHECKPOINTS = {  # family -> (writer of the full-size checkpoint, what it is)
    "sd15": (functools.partial(write_tiny_checkpoint, "sd15_full"), "SD1.5 layout"),
    "sdxl": (functools.partial(write_sdxl_checkpoint, model_class="SDXL"), "SDXL base layout"),
}
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


def measure(family: str, place: Callable[[Path], None], which: str, server_args: tuple[str, ...] = (),
            weight_dtype: str = "default") -> dict:
    """One fresh server (started with `server_args`) whose models folder `place` fills; runs the `which` graph of the
    family's workflow (Load Diffusion Model with `weight_dtype`)."""
    with tempfile.TemporaryDirectory(prefix="razor_comfy_memory_") as tmp:
        base = Path(tmp)
        place(base)
        server = start_server(base, extra_args=server_args)
        try:
            idle = peak_rss_mb(server)
            prompt = (family_prompt(server, family, EDIT_PREFIX, weight_dtype) if family in FAMILIES
                      else cpu_prompt(server, family, EDIT_PREFIX))
            graph = inference_graph(prompt) if which == "inference" else prompt
            start = time.time()
            outputs = server.run(graph, timeout=TIMEOUT_S)
            seconds = time.time() - start
            result = {"graph": which, "nodes": len(graph), "seconds": round(seconds, 1),
                      "idle_rss_mb": round(idle, 1), "peak_rss_mb": round(peak_rss_mb(server), 1)}
            if which == "razor":
                report = outputs[one_of(prompt, "PreviewAny")]["text"][0]
                result["units"] = next(line for line in report.splitlines() if line.startswith("edited units:"))
                result["backward_passes"] = int(report.split(" backward passes")[0].rsplit(" ", 1)[-1])
                edit_file, = (base / "output").glob(f"{EDIT_PREFIX}_*.safetensors")
                result["edit_bytes"] = edit_file.stat().st_size
            return result
        finally:
            server.stop()


def in_child_process(function: Callable, *args, **kwargs):
    """`function(*args, **kwargs)` in a child process: writing a checkpoint builds all of it in memory (SDXL: 7 GB),
    which this process would keep (the allocator does not hand it back) while the servers it measures run."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args, **kwargs).result()


def checkpoint_placer(family: str, checkpoint: Path) -> Callable[[Path], None]:
    """Links `checkpoint` into models/checkpoints under the name the family's workflow loads."""
    workflow = json.loads(workflow_path(family).read_text())
    ckpt_name, = next(n for n in workflow["nodes"] if n["type"] == "CheckpointLoaderSimple")["widgets_values"]

    def place(base: Path) -> None:
        (base / "models" / "checkpoints").mkdir(parents=True)
        os.symlink(checkpoint, base / "models" / "checkpoints" / ckpt_name)
    return place


def files_placer(family: str, written: dict[str, Path]) -> Callable[[Path], None]:
    """Links the family's diffusion model, CLIP-L and VAE where its loaders look."""
    def place(base: Path) -> None:
        for role, target in family_files(base, family).items():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(written[role], target)
    return place


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(CHECKPOINTS) + ["flux_dev"], default="sd15")
    parser.add_argument("--depth", type=int, default=1,
                        help="flux_dev: double-stream blocks (and twice as many single-stream ones)")
    parser.add_argument("--bf16-unet", action="store_true",
                        help="ComfyUI holds the UNet in bf16 (its --bf16-unet): SDXL base in float32 does not fit a "
                             "23 GB machine")
    parser.add_argument("--weight-dtype", default="default", choices=("default", "fp8_e4m3fn"),
                        help="flux_dev: Load Diffusion Model's weight_dtype")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    server_args = ("--bf16-unet",) if args.bf16_unet else ()
    with tempfile.TemporaryDirectory(prefix=f"razor_{args.family}_full_") as tmp:
        if args.family == "flux_dev":
            layout = f"Flux-dev layout, {args.depth} double + {2 * args.depth} single blocks"
            written = {role: Path(tmp) / f"{role}.safetensors" for role in ("diffusion_model", "clip_l", "vae")}
            in_child_process(write_family_files, args.family, **written, depth=args.depth,
                             depth_single_blocks=2 * args.depth)
            place, model_file = files_placer(args.family, written), written["diffusion_model"]
        else:
            write, layout = CHECKPOINTS[args.family]
            model_file = in_child_process(write, Path(tmp) / f"{args.family}_full.safetensors")
            place = checkpoint_placer(args.family, model_file)
        runs = [measure(args.family, place, which, server_args, args.weight_dtype) for which in ("inference", "razor")]
        model_bytes = model_file.stat().st_size
    model_gb = model_bytes / 2**30
    inference, razor = runs
    results = {"family": args.family, "checkpoint": f"{layout}, random weights, float16",
               "server_args": list(server_args), "weight_dtype": args.weight_dtype,
               "checkpoint_gb": round(model_gb, 3), "runs": runs,
               "razor_peak / inference_peak": round(razor["peak_rss_mb"] / inference["peak_rss_mb"], 3),
               "edit_bytes / checkpoint_bytes": round(razor["edit_bytes"] / model_bytes, 5)}
    atomic_write_bytes(args.json, (json.dumps(results, indent=1) + "\n").encode())
    print(f"{layout} ({model_gb:.2f} GB file) in ComfyUI on the CPU")
    print("| graph | nodes | seconds | idle RSS MB | peak RSS MB |")
    print("|---|---|---|---|---|")
    for r in runs:
        print(f"| {r['graph']} | {r['nodes']} | {r['seconds']} | {r['idle_rss_mb']} | {r['peak_rss_mb']} |")
    print(f"razor_peak / inference_peak = {results['razor_peak / inference_peak']}; {razor['backward_passes']} "
          f"backward passes; edit file {razor['edit_bytes'] / 2**20:.2f} MiB = "
          f"{100 * results['edit_bytes / checkpoint_bytes']:.3f} % of the model file ({razor['units']})")


if __name__ == "__main__":
    main()
