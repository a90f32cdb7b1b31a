"""Edit-file size of one edited head at the published shapes of large DiT blocks, against full-shape differences.

    .venv/bin/python -m benchmarks.edit_size --json out/edit_size.json     # a few seconds, ~1.5 GB of memory

Each case is one head's slices (its q, k and v rows of the fused input projection, with their biases, and its
columns of the output projection) filled with random values, saved by `RazorEdit.save` as the nodes save it (row or
column edits as exact LoRA pairs with a one-hot selector) into a temporary folder. "Full differences" is what
full-shape float32 `.diff` tensors of the same parameters take. Shapes: Flux.1 (hidden 3072, 24 heads of 128, MLP
ratio 4): a double block's image-stream attention (`qkv` 9216×3072, `proj` 3072×3072) and a single block
(`linear1` 21504×3072, `linear2` 3072×15360); Chroma's blocks have the same shapes.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from razor_core.edit import RazorEdit
from razor_core.minicanvas.store import atomic_write_bytes
from razor_core.units import EditUnit, Slice, scatter_unit

WIDTH, HEAD = 3072, 128
MLP = 4 * WIDTH
# case: ({parameter: shape}, the fused input projection, the output projection)
CASES = {
    "flux double block, image attention head": ({"qkv.weight": (3 * WIDTH, WIDTH), "qkv.bias": (3 * WIDTH,),
                                                  "proj.weight": (WIDTH, WIDTH)}, "qkv", "proj"),
    "flux single block head": ({"linear1.weight": (3 * WIDTH + MLP, WIDTH), "linear1.bias": (3 * WIDTH + MLP,),
                                "linear2.weight": (WIDTH, WIDTH + MLP)}, "linear1", "linear2"),
}


def head_unit(fused_in: str, fused_out: str) -> EditUnit:
    rows = [Slice(f"{fused_in}.{p}", 0, offset, HEAD) for offset in (0, WIDTH, 2 * WIDTH) for p in ("weight", "bias")]
    return EditUnit("head0", "head", tuple(rows + [Slice(f"{fused_out}.weight", 1, 0, HEAD)]))


def measure(shapes: dict[str, tuple[int, ...]], fused_in: str, fused_out: str) -> dict:
    like = {name: torch.zeros(shape) for name, shape in shapes.items()}
    unit = head_unit(fused_in, fused_out)
    size = sum(s.of(like[s.param]).numel() for s in unit.slices)
    delta = scatter_unit(unit, torch.randn(size, generator=torch.Generator().manual_seed(0)), like)
    edit = RazorEdit(delta, [unit], "concept", {}, "0" * 64)
    with tempfile.TemporaryDirectory() as folder:
        file_bytes = edit.save(Path(folder) / "edit.safetensors").stat().st_size
    return {"edit_file_mb": round(file_bytes / 1e6, 1),
            "full_differences_mb": round(sum(d.numel() * 4 for d in delta.values()) / 1e6, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    results = {name: measure(*case) for name, case in CASES.items()}
    atomic_write_bytes(args.json, (json.dumps(results, indent=1) + "\n").encode())
    print("| one edited head | edit file MB | full differences MB |\n|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['edit_file_mb']} | {r['full_differences_mb']} |")


if __name__ == "__main__":
    main()
