"""Write the MiniCanvas example workflows (UI format, what the frontend saves) and their thumbnails, and the SD3,
SDXL and Flux-dev workflows (the SD1.5 one, laid out by hand, with each family's loaders, latent and sampler
settings).

    .venv/bin/python scripts/build_workflows.py

The MiniCanvas graphs are described once here, laid out in columns by depth, and written as workflows/<name>.json.
Each thumbnail is the workflow's own before/after preview: the script runs every workflow through a real ComfyUI
server (tests/comfy_server.py) and saves the stitched images, enlarged, as workflows/<name>.jpg. The checkpoint
workflows need real SD weights, so their thumbnails are screenshots of the graph (scripts/screenshots.py).
"""
from __future__ import annotations

import json
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.comfy_server import ComfyServer, start_server, ui_workflow_to_api_prompt  # noqa: E402

WORKFLOWS = REPO / "workflows"
REAPPLIED_EDIT = "razor_neon_edit.safetensors"

# Output sockets (name, type) of every node type used here.
OUTPUTS = {
    "RazorLoadMiniCanvas": [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")],
    "RazorLoadForgetSet": [("FORGET_SET", "FORGET_SET")],
    "RazorScoreHeads": [("RAZOR_SCORES", "RAZOR_SCORES"), ("heatmap", "IMAGE")],
    "RazorGrowEditSet": [("RAZOR_EDIT", "RAZOR_EDIT"), ("growth", "IMAGE"), ("report", "STRING")],
    "RazorApplyEdit": [("MODEL", "MODEL"), ("CLIP", "CLIP")],
    "RazorSaveUnlearnedModel": [("path", "STRING")],
    "LoraLoaderModelOnly": [("MODEL", "MODEL")],
    "CLIPTextEncode": [("CONDITIONING", "CONDITIONING")],
    "EmptyChromaRadianceLatentImage": [("LATENT", "LATENT")],
    "KSampler": [("LATENT", "LATENT")],
    "VAEDecode": [("IMAGE", "IMAGE")],
    "ImageStitch": [("IMAGE", "IMAGE")],
    "PreviewImage": [], "PreviewAny": [], "MarkdownNote": [],
}


# Width and height of every node type as laid out (the frontend's own minimum or more: multiline text boxes, and
# the previews that Score Heads, Grow Edit Set and Preview Image show inside the node, need room).
SIZES = {
    "RazorLoadMiniCanvas": (300, 80), "LoraLoaderModelOnly": (320, 110), "RazorLoadForgetSet": (400, 440),
    "EmptyChromaRadianceLatentImage": (300, 110), "RazorScoreHeads": (360, 640), "RazorGrowEditSet": (360, 560),
    "RazorApplyEdit": (300, 100), "RazorSaveUnlearnedModel": (300, 130), "PreviewAny": (360, 300),
    "CLIPTextEncode": (340, 140), "KSampler": (320, 270), "VAEDecode": (210, 50), "ImageStitch": (280, 150),
    "PreviewImage": (420, 480), "MarkdownNote": (440, 760),
}


@dataclass
class Node:
    type: str
    widgets: list = field(default_factory=list)
    links: dict = field(default_factory=dict)   # input name -> (source key, output slot)
    title: str | None = None


def sampling(graph: dict, tag: str, model: tuple, clip: tuple, prompt: str, seed: int = 7) -> str:
    """Prompt -> KSampler -> VAE Decode on the given MODEL/CLIP; returns the decode node's key."""
    graph[f"{tag}_pos"] = Node("CLIPTextEncode", [prompt], {"clip": clip}, f"{tag}: prompt")
    graph[f"{tag}_neg"] = Node("CLIPTextEncode", [""], {"clip": clip}, f"{tag}: negative")
    graph[f"{tag}_latent"] = Node("EmptyChromaRadianceLatentImage", [32, 32, 8])
    graph[f"{tag}_k"] = Node("KSampler", [seed, "fixed", 20, 4.0, "euler", "simple", 1.0],
                             {"model": model, "positive": (f"{tag}_pos", 0), "negative": (f"{tag}_neg", 0),
                              "latent_image": (f"{tag}_latent", 0)}, f"KSampler ({tag})")
    graph[f"{tag}_img"] = Node("VAEDecode", [], {"samples": (f"{tag}_k", 0), "vae": ("load", 2)})
    return f"{tag}_img"


def before_after(graph: dict, prompt: str, edited_model: tuple, edited_clip: tuple, seed: int = 7) -> None:
    before = sampling(graph, "before", ("load", 0), ("load", 1), prompt, seed)
    after = sampling(graph, "after", edited_model, edited_clip, prompt, seed)
    graph["stitch"] = Node("ImageStitch", ["down", True, 4, "white"], {"image1": (before, 0), "image2": (after, 0)},
                           "before (top) / after (bottom)")
    graph["preview"] = Node("PreviewImage", [], {"images": ("stitch", 0)}, "before / after")


def unlearning(concept: str, kind: str, blocks: str = "denoiser", save_prefix: str | None = None) -> dict:
    graph = {
        "load": Node("RazorLoadMiniCanvas"),
        "forget": Node("RazorLoadForgetSet", [concept, kind, "MiniCanvas demo", "", "", ""]),
        "score_latent": Node("EmptyChromaRadianceLatentImage", [32, 32, 1], title="image size for self-generation"),
        "score": Node("RazorScoreHeads", ["heads", blocks, 0, "fixed", 20, 4.0, "euler", "simple"],
                      {"model": ("load", 0), "clip": ("load", 1), "forget_set": ("forget", 0),
                       "latent": ("score_latent", 0)}),
        "grow": Node("RazorGrowEditSet", ["razor", 3, 6, 0.8, 0.05],
                     {"model": ("load", 0), "clip": ("load", 1), "forget_set": ("forget", 0),
                      "scores": ("score", 0)}),
        "apply": Node("RazorApplyEdit", [1.0], {"model": ("load", 0), "edit": ("grow", 0), "clip": ("load", 1)}),
        "report": Node("PreviewAny", [], {"source": ("grow", 2)}, "report"),
    }
    if save_prefix:
        graph["save"] = Node("RazorSaveUnlearnedModel", ["edit file", save_prefix], {"edit": ("grow", 0)})
    return graph


def note(text: str) -> Node:
    return Node("MarkdownNote", [text], title="Read me")


STYLE_NOTE = """## Remove a style: neon, from the MiniCanvas demo model

1. **Load Forget Set**: the concept to forget (*neon*), its kind, and where the prompts come from. The preset
   *MiniCanvas demo* writes the forget prompts (every object in neon), their anchors (the object alone) and the retain
   prompts (every other style). For your own model choose *custom* and type them (`{concept}` stands for the concept).
2. **Score Heads**: the model draws its own forget/retain images at the latent's size, then every unit of the
   denoiser is scored (*blocks = denoiser*: the edit lives in the MODEL). The cross-attention key/value heads, where
   every prompt enters the denoiser, are the candidates (heat-map: rows = modules, columns = heads; the first edit
   set is outlined).
3. **Grow Edit Set**: each round moves the edit set's keys/values towards the closed-form map of *neon*'s onto the
   anchor's, with a step size searched on held-out noise, and adds heads until the concept is gone
   (*forget_target*) without moving the retain prompts more than *retain_tolerance*. Report and growth curve shown.
4. **Apply RAZOR Edit**: patched copies of MODEL/CLIP; the originals stay untouched, so both are sampled below
   with the same seed: **top = before, bottom = after**.
5. **Save Unlearned Model** writes the edit file to `output/razor/` (re-apply it with the stock LoRA loader).

Try another style (brick, grass, gravel, stripes, dots, sunset, checker) in Load Forget Set and in the prompts.
A run takes well under a minute on a CPU."""

OBJECT_NOTE = """## Remove an object: star, from the MiniCanvas demo model

The same chain as the style workflow with **kind = object**: the forget prompts draw a star in every style, the
anchors name the style alone, the retain prompts every other object. **Top = before, bottom = after** (same seed):
the sunset style stays, the star goes. Other objects: circle, square, triangle, cross, ring, heart, crescent."""

REAPPLY_NOTE = """## Re-apply a saved edit to the MODEL alone (stock LoraLoaderModelOnly)

**Save Unlearned Model** (format *edit file*) writes a safetensors file of the exact weight changes
in LoRA keys (`<key>.diff`, `.diff_b`, and `lora_up`/`lora_down` pairs for edits confined to a few rows or
columns) plus RAZOR metadata. The default edit lives in the denoiser (the MODEL), so ComfyUI's
stock **LoraLoaderModelOnly** applies all of it, and the prompts go through the original, unedited CLIP:

1. Copy `output/razor/neon_00001_.safetensors` (from the style workflow) to `models/loras/razor_neon_edit.safetensors`
   (or pick your file in the loader).
2. Keep the strength at 1.0 (0 = the original model, 1 = the edit as computed).

**Top = the original model, bottom = through the MODEL-only loader** (same seed, same CLIP)."""

CLIP_NOTE = """## Text-encoder-only edit: forget *neon* in the CLIP

**Score Heads** with *blocks = text_encoder* scores and edits only the CLIP's heads and MLPs; the denoiser is not
touched. The edit then travels with the CLIP: Apply RAZOR Edit patches the CLIP, and the unchanged MODEL draws
from the edited prompt features. **Top = before, bottom = after** (same seed)."""


def graphs() -> dict[str, dict]:
    style = unlearning("neon", "style", save_prefix="razor/neon")
    before_after(style, "a star in neon style", ("apply", 0), ("apply", 1))
    style["note"] = note(STYLE_NOTE)

    obj = unlearning("star", "object", save_prefix="razor/star")
    before_after(obj, "a star in sunset style", ("apply", 0), ("apply", 1))
    obj["note"] = note(OBJECT_NOTE)

    reapply = {"load": Node("RazorLoadMiniCanvas"),
               "lora": Node("LoraLoaderModelOnly", [REAPPLIED_EDIT, 1.0], {"model": ("load", 0)}),
               "note": note(REAPPLY_NOTE)}
    before_after(reapply, "a star in neon style", ("lora", 0), ("load", 1))

    clip_only = unlearning("neon", "style", blocks="text_encoder", save_prefix="razor/neon_clip")
    before_after(clip_only, "a star in neon style", ("load", 0), ("apply", 1))
    clip_only["note"] = note(CLIP_NOTE)
    return {"minicanvas_remove_style": style, "minicanvas_remove_object": obj,
            "minicanvas_reapply_saved_edit": reapply, "minicanvas_clip_text_only": clip_only}


SD3_NOTE = """## SD3: remove an artist's style (Van Gogh) with RAZOR

Needs an SD3 / SD3.5 checkpoint and a GPU (16 GB of VRAM or more for SD3 Medium; a few minutes). The graph is the
SD1.5 one: RAZOR scores SD3's joint-attention heads (each head's rows of the fused `qkv` and its columns of `proj`,
in both the image and the text stream), its MLPs and the CLIP-L/CLIP-G heads.

1. **Load Checkpoint**: a file that holds the text encoders (here `sd3_medium_incl_clips.safetensors`). For a file
   without them (SD3.5), add **TripleCLIPLoader** (clip_g, clip_l, t5xxl) and connect its CLIP wherever the
   checkpoint's CLIP goes; T5 encodes as usual but is not edited.
2. **Load Forget Set** (*custom*): the **concept**, the **forget prompts** (`{concept}` stands for it), the **anchor**
   (what it should become) and the **retain prompts** (neighbouring artists and subjects that must not change).
3. **EmptySD3LatentImage** (1024 x 1024) sets the size of the images the model draws for itself.
4. **Score Heads** (sampler settings as SD3 likes them: dpmpp_2m, sgm_uniform, cfg 4.5) and **Grow Edit Set**: as
   in the SD1.5 workflow; heat-map, growth curve and report below.
5. **Apply RAZOR Edit**: **left = original, right = unlearned**, same prompt and seed.
6. **Save Unlearned Model** writes the edit to `output/razor/`; the stock **Load LoRA** re-applies it exactly."""

SD3_CHANGES = {  # node type -> widget values (and the type it becomes)
    "CheckpointLoaderSimple": ("CheckpointLoaderSimple", ["sd3_medium_incl_clips.safetensors"]),
    "EmptyLatentImage": ("EmptySD3LatentImage", [1024, 1024, 1]),
    "RazorScoreHeads": ("RazorScoreHeads", ["heads", "all", 0, "fixed", 20, 4.5, "dpmpp_2m", "sgm_uniform"]),
    "KSampler": ("KSampler", [42, "fixed", 28, 4.5, "dpmpp_2m", "sgm_uniform", 1.0]),
    "RazorSaveUnlearnedModel": ("RazorSaveUnlearnedModel", ["edit file", "razor/sd3_van_gogh"]),
    "MarkdownNote": ("MarkdownNote", [SD3_NOTE]),
}

SDXL_NOTE = """## SDXL: remove an artist's style (Van Gogh) with RAZOR

Needs an SDXL checkpoint (base 1.0 or a fine-tune such as Juggernaut, RealVis, Pony, Illustrious) and a GPU.
RAZOR holds float32 gradients of the units it scores on top of what sampling needs, so plan for more VRAM than
sampling alone (docs/benchmarks.md lists measured peaks). The graph is the SD1.5 one:

1. **Load Checkpoint**: your SDXL file (here `sd_xl_base_1.0.safetensors`). Its two text encoders (CLIP-L and
   CLIP-G) encode the prompts; with *blocks = denoiser* (default) only the UNet is edited.
2. **Load Forget Set** (*custom*): the **concept**, the **forget prompts** (`{concept}` stands for it), the **anchor**
   (what it should become) and the **retain prompts** (neighbouring artists and subjects that must not change).
3. **Empty Latent Image** at SDXL's native 1024 x 1024 sets the size of the images the model draws for itself.
4. **Score Heads** (dpmpp_2m, karras, cfg 7) and **Grow Edit Set**: every cross-attention key/value head and MLP of
   the UNet is scored; heat-map, growth curve and report below.
5. **Apply RAZOR Edit**: **left = original, right = unlearned**, same prompt and seed.
6. **Save Unlearned Model** writes the edit to `output/razor/`; copy it to `models/loras/` and the stock
   **LoraLoaderModelOnly** re-applies it exactly."""

SDXL_CHANGES = {
    "CheckpointLoaderSimple": ("CheckpointLoaderSimple", ["sd_xl_base_1.0.safetensors"]),
    "EmptyLatentImage": ("EmptyLatentImage", [1024, 1024, 1]),
    "RazorScoreHeads": ("RazorScoreHeads", ["heads", "denoiser", 0, "fixed", 20, 7.0, "dpmpp_2m", "karras"]),
    "KSampler": ("KSampler", [42, "fixed", 25, 7.0, "dpmpp_2m", "karras", 1.0]),
    "RazorSaveUnlearnedModel": ("RazorSaveUnlearnedModel", ["edit file", "razor/sdxl_van_gogh"]),
    "MarkdownNote": ("MarkdownNote", [SDXL_NOTE]),
}

FLUX_NOTE = """## Flux.1-dev: remove an artist's style (Van Gogh) with RAZOR

Needs Flux.1-dev (or schnell, or a fine-tune) and a GPU. Flux's text encoder T5-XXL cannot be edited, so the edit
lives in the denoiser (*blocks = denoiser*): each double-stream block's image and text attention heads and MLPs, and
each single-stream block's heads (a head's rows of the fused q/k/v projection and its columns of the output) and MLP.

1. **Load Diffusion Model** (`flux1-dev.safetensors` in `models/diffusion_models`). *weight_dtype fp8_e4m3fn* halves
   the weights' memory; RAZOR still computes its gradients and steps in float32 and saves them against the weights
   you loaded. GGUF models must be loaded unquantised (Score Heads says so).
2. **DualCLIPLoader** (`clip_l.safetensors`, `t5xxl_fp16.safetensors`, type *flux*) and **Load VAE**
   (`ae.safetensors`).
3. **Load Forget Set** (*custom*): the **concept**, the **forget prompts**, the **anchor** and the **retain prompts**.
4. **EmptySD3LatentImage** (1024 x 1024): the size of the images the model draws for itself.
5. **Score Heads** and the samplers use Flux-dev's settings: cfg 1 (Flux-dev is guidance-distilled: its guidance,
   3.5 unless a FluxGuidance node sets another, comes with the conditioning), euler, simple.
6. **Grow Edit Set**, **Apply RAZOR Edit**: **left = original, right = unlearned**, same prompt and seed.
7. **Save Unlearned Model** writes the edit to `output/razor/`: head edits are stored as exact low-rank pairs, so a
   Flux edit is megabytes, not the gigabytes of whole fused matrices. The stock **LoraLoaderModelOnly** re-applies it.

Memory: RAZOR holds float32 gradients of the units it scores on top of what sampling needs (docs/benchmarks.md lists
measured peaks and the extrapolation to the full model)."""

FLUX_CHANGES = {
    "CheckpointLoaderSimple": ("UNETLoader", ["flux1-dev.safetensors", "default"]),
    "EmptyLatentImage": ("EmptySD3LatentImage", [1024, 1024, 1]),
    "RazorScoreHeads": ("RazorScoreHeads", ["heads", "denoiser", 0, "fixed", 20, 1.0, "euler", "simple"]),
    "KSampler": ("KSampler", [42, "fixed", 20, 1.0, "euler", "simple", 1.0]),
    "RazorSaveUnlearnedModel": ("RazorSaveUnlearnedModel", ["edit file", "razor/flux_dev_van_gogh"]),
    "MarkdownNote": ("MarkdownNote", [FLUX_NOTE]),
}
# The checkpoint's CLIP and VAE outputs, when its loader becomes Load Diffusion Model: (node type, widgets, output).
FLUX_SEPARATE_LOADERS = [("DualCLIPLoader", ["clip_l.safetensors", "t5xxl_fp16.safetensors", "flux", "default"], "CLIP"),
                         ("VAELoader", ["ae.safetensors"], "VAE")]


def from_sd15(sd15: dict, name: str, changes: dict, separate_loaders: list | None = None) -> dict:
    """The SD1.5 workflow with another family's files, latent node, sampler settings and note (same layout and
    links). `separate_loaders`: the family loads its diffusion model alone, so the checkpoint loader's CLIP and VAE
    outputs move to loaders of their own, placed under it (the column's other nodes shift down to make room)."""
    workflow = json.loads(json.dumps(sd15))
    nodes = workflow["nodes"]
    loader = next(n for n in nodes if n["type"] == "CheckpointLoaderSimple")
    for node in nodes:
        if node["type"] in changes:
            node["type"], node["widgets_values"] = changes[node["type"]]
            node.setdefault("properties", {})["Node name for S&R"] = node["type"]
    if separate_loaders:
        top, left = loader["pos"][1] + loader["size"][1] + 40, loader["pos"][0]
        added = []
        for slot, (kind, widgets, socket) in enumerate(separate_loaders, start=1):
            links = loader["outputs"][slot]["links"]
            node_id = max(n["id"] for n in nodes) + 1
            for link in workflow["links"]:
                if link[0] in links:
                    link[1], link[2] = node_id, 0
            size = [320, 130 if kind == "DualCLIPLoader" else 60]
            added.append({"id": node_id, "type": kind, "pos": [left, top], "size": size, "flags": {}, "order": 0,
                          "mode": 0, "inputs": [], "outputs": [{"name": socket, "type": socket, "links": links,
                                                                 "slot_index": 0}],
                          "properties": {"Node name for S&R": kind}, "widgets_values": widgets})
            nodes.append(added[-1])
            top += size[1] + 40
        shift = top - (loader["pos"][1] + loader["size"][1] + 40)
        for node in nodes:
            if node["pos"][0] == left and node["pos"][1] > loader["pos"][1] and node not in added:
                node["pos"][1] += shift
        loader["outputs"] = loader["outputs"][:1]
        workflow["last_node_id"] = max(n["id"] for n in nodes)
        column = next(g for g in workflow["groups"] if g["bounding"][0] < left < g["bounding"][0] + g["bounding"][2])
        column["bounding"][3] += shift
    workflow["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfyui-razor/{name}"))
    return workflow


def _depths(graph: dict[str, Node]) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(key: str) -> int:
        if key not in depth:
            depth[key] = 1 + max((visit(src) for src, _ in graph[key].links.values()), default=-1)
        return depth[key]
    for key in graph:
        visit(key)
    return depth


def to_ui(graph: dict[str, Node]) -> dict:
    """UI-format workflow: nodes with positions, sockets and positional widget values; links by id."""
    ids = {key: i + 1 for i, key in enumerate(graph)}
    depth = _depths(graph)
    rows: dict[int, int] = {}
    links, nodes = [], []
    outgoing: dict[tuple[str, int], list[int]] = {}
    for key, node in graph.items():
        for name, (src, slot) in node.links.items():
            link_id = len(links) + 1
            links.append([link_id, ids[src], slot, ids[key], list(node.links).index(name),
                          OUTPUTS[graph[src].type][slot][1]])
            outgoing.setdefault((src, slot), []).append(link_id)
    link_ids = iter(range(1, len(links) + 1))
    columns = {key: depth[key] if node.type != "MarkdownNote" else 0 for key, node in graph.items()}
    widths = {c: max(SIZES[graph[k].type][0] for k in columns if columns[k] == c) for c in set(columns.values())}
    lefts = {c: 40 + sum(widths[d] + 60 for d in widths if d < c) for c in widths}
    for key, node in graph.items():
        column = columns[key]
        row = rows.get(column, 0)
        size = list(SIZES[node.type])
        rows[column] = row + size[1] + 70  # room for the title bar
        inputs = []
        for name in node.links:
            src, slot = node.links[name]
            inputs.append({"name": name, "type": OUTPUTS[graph[src].type][slot][1], "link": next(link_ids)})
        outputs = [{"name": n, "type": t, "links": outgoing.get((key, s), []), "slot_index": s}
                   for s, (n, t) in enumerate(OUTPUTS[node.type])]
        entry = {"id": ids[key], "type": node.type, "pos": [lefts[column], 40 + row], "size": size,
                 "flags": {}, "order": depth[key], "mode": 0, "inputs": inputs, "outputs": outputs,
                 "properties": {"Node name for S&R": node.type}, "widgets_values": node.widgets}
        if node.title:
            entry["title"] = node.title
        nodes.append(entry)
    return {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, json.dumps([n["type"] for n in nodes]))), "revision": 0,
            "last_node_id": len(nodes), "last_link_id": len(links), "nodes": nodes, "links": links, "groups": [],
            "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


def thumbnail(server: ComfyServer, workflow: dict, path: Path, pairs: int = 4, scale: int = 3) -> None:
    """The first `pairs` before/after columns of the workflow's own preview, side by side, enlarged."""
    prompt = ui_workflow_to_api_prompt(workflow, server.object_info())
    preview = next(i for i, n in prompt.items() if n["class_type"] == "PreviewImage"
                   and prompt[n["inputs"]["images"][0]]["class_type"] == "ImageStitch")
    images = server.images(server.run(prompt, timeout=900)[preview])[:pairs]
    strip = Image.fromarray(np.concatenate(list(images), axis=1))
    strip.resize((strip.width * scale, strip.height * scale), Image.NEAREST).save(path, quality=92)


def main() -> None:
    built = {name: to_ui(graph) for name, graph in graphs().items()}
    sd15 = json.loads((WORKFLOWS / "sd15_remove_style.json").read_text())
    built["sd3_remove_style"] = from_sd15(sd15, "sd3_remove_style", SD3_CHANGES)
    built["sdxl_remove_style"] = from_sd15(sd15, "sdxl_remove_style", SDXL_CHANGES)
    built["flux_dev_remove_style"] = from_sd15(sd15, "flux_dev_remove_style", FLUX_CHANGES, FLUX_SEPARATE_LOADERS)
    for name, workflow in built.items():
        (WORKFLOWS / f"{name}.json").write_text(json.dumps(workflow, indent=1) + "\n")
    server = start_server(Path(tempfile.mkdtemp(prefix="razor_workflows_")))
    try:
        for name in ("minicanvas_remove_style", "minicanvas_remove_object", "minicanvas_clip_text_only"):
            thumbnail(server, built[name], WORKFLOWS / f"{name}.jpg")
        loras = server.base_dir / "models" / "loras"
        loras.mkdir(parents=True, exist_ok=True)
        shutil.copy(server.base_dir / "output" / "razor" / "neon_00001_.safetensors", loras / REAPPLIED_EDIT)
        thumbnail(server, built["minicanvas_reapply_saved_edit"], WORKFLOWS / "minicanvas_reapply_saved_edit.jpg")
    finally:
        server.stop()
    print("wrote", ", ".join(sorted(built)))


if __name__ == "__main__":
    main()
