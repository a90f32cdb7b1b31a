"""API-format graphs shared by the server tests and benchmarks: the RAZOR chain on the MiniCanvas demo model, and the
shipped real-checkpoint workflows shrunk for the CPU."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.comfy_server import REPO_ROOT, ComfyServer, ui_workflow_to_api_prompt
from tests.tiny_families import FAMILIES

LATENT_NODES = ("EmptyLatentImage", "EmptySD3LatentImage", "EmptyHunyuanLatentVideo")
MODEL_LOADERS = ("CheckpointLoaderSimple", "UNETLoader")
FAMILY_CLIP_FILE = "razor_tiny_clip_l.safetensors"
SIZE, STEPS = 64, 4  # the shrunk workflows' image side and sampler steps


def small_unlearning_chain(concept: str, kind: str, forget_prompts: str, retain_prompts: str, seed: int = 0,
                           filename_prefix: str = "razor/unlearned") -> dict:
    """Load -> Load Forget Set -> Score Heads -> Grow Edit Set -> Apply RAZOR Edit, and Save Unlearned Model (edit
    file), with settings small enough for seconds per run on CPU: 4 sampler steps for the self-generated images, at
    most two initial units, one round. Node ids: load, forget, latent, score, grow, apply, save."""
    return {
        "load": {"class_type": "RazorLoadMiniCanvas", "inputs": {}},
        "forget": {"class_type": "RazorLoadForgetSet", "inputs": {
            "concept": concept, "kind": kind, "preset": "custom", "forget_prompts": forget_prompts, "anchor": "",
            "retain_prompts": retain_prompts}},
        "latent": {"class_type": "EmptyChromaRadianceLatentImage", "inputs": {"width": 32, "height": 32,
                                                                              "batch_size": 1}},
        "score": {"class_type": "RazorScoreHeads", "inputs": {
            "model": ["load", 0], "clip": ["load", 1], "forget_set": ["forget", 0], "latent": ["latent", 0],
            "granularity": "heads", "blocks": "all", "seed": seed, "steps": 4, "cfg": 4.0, "sampler_name": "euler",
            "scheduler": "simple"}},
        "grow": {"class_type": "RazorGrowEditSet", "inputs": {
            "model": ["load", 0], "clip": ["load", 1], "forget_set": ["forget", 0], "scores": ["score", 0],
            "method": "razor", "max_initial_units": 2, "max_rounds": 1, "forget_target": 0.8,
            "retain_tolerance": 0.05}},
        "apply": {"class_type": "RazorApplyEdit", "inputs": {"model": ["load", 0], "edit": ["grow", 0],
                                                             "strength": 1.0, "clip": ["load", 1]}},
        "save": {"class_type": "RazorSaveUnlearnedModel", "inputs": {
            "edit": ["grow", 0], "format": "edit file", "filename_prefix": filename_prefix}},
    }


def workflow_path(family: str) -> Path:
    return REPO_ROOT / "workflows" / f"{family}_remove_style.json"


def ids_of(prompt: dict, class_type: str) -> list[str]:
    return [k for k, n in prompt.items() if n["class_type"] == class_type]


def one_of(prompt: dict, class_type: str) -> str:
    ids = ids_of(prompt, class_type)
    assert len(ids) == 1, f"expected one {class_type} in the workflow, found {ids}"
    return ids[0]


def first_lines(text: str, n: int) -> str:
    return "\n".join([line for line in text.splitlines() if line.strip()][:n])


def cpu_prompt(server: ComfyServer, family: str, filename_prefix: str) -> dict:
    """workflows/<family>_remove_style.json as an API prompt, shrunk for two CPU cores (the file itself is unchanged):
    64x64 images (one frame for video models), 4 sampler steps, two forget and two retain prompts, two rounds; the
    edit file saved under `filename_prefix`."""
    prompt = ui_workflow_to_api_prompt(json.loads(workflow_path(family).read_text()), server.object_info())
    for node in prompt.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind in LATENT_NODES:
            inputs.update(width=SIZE, height=SIZE, batch_size=1)
            if "length" in inputs:
                inputs["length"] = 1
        elif kind in ("KSampler", "RazorScoreHeads"):
            inputs["steps"] = STEPS
        elif kind == "RazorLoadForgetSet":
            inputs["forget_prompts"] = first_lines(inputs["forget_prompts"], 2)
            inputs["retain_prompts"] = first_lines(inputs["retain_prompts"], 2)
        elif kind == "RazorGrowEditSet":
            inputs["max_rounds"] = 2  # one step and one growth round
        elif kind == "RazorSaveUnlearnedModel":
            inputs["filename_prefix"] = filename_prefix
    return prompt


def model_loader(prompt: dict) -> str:
    """The node that loads the MODEL: Load Checkpoint, or Load Diffusion Model for the families loaded in parts."""
    loaders = [k for k, n in prompt.items() if n["class_type"] in MODEL_LOADERS]
    assert len(loaders) == 1, f"expected one model loader in the workflow, found {loaders}"
    return loaders[0]


def family_files(base: Path, family: str) -> dict[str, Path]:
    """Where `family`'s tiny diffusion model, CLIP-L and VAE go in a server's base directory (tests/tiny_families)."""
    return {"diffusion_model": base / "models" / "diffusion_models" / f"razor_tiny_{family}.safetensors",
            "clip_l": base / "models" / "text_encoders" / FAMILY_CLIP_FILE,
            "vae": base / "models" / "vae" / f"razor_tiny_{family}_vae.safetensors"}


def family_prompt(server: ComfyServer, family: str, edit_prefix: str, weight_dtype: str = "default") -> dict:
    """The Flux-dev workflow, shrunk for the CPU, loading `family`'s tiny files (stored as Load Diffusion Model's
    `weight_dtype` says): CLIP-L through Load CLIP (with the family's type) instead of DualCLIPLoader, and the
    family's empty-latent node."""
    spec, paths = FAMILIES[family], family_files(server.base_dir, family)
    prompt = cpu_prompt(server, "flux_dev", edit_prefix)
    for node in prompt.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "UNETLoader":
            inputs.update(unet_name=paths["diffusion_model"].name, weight_dtype=weight_dtype)
        elif kind == "VAELoader":
            inputs["vae_name"] = paths["vae"].name
        elif kind == "DualCLIPLoader":
            node.update(class_type="CLIPLoader", inputs={"clip_name": FAMILY_CLIP_FILE, "type": spec.clip_type,
                                                         "device": "default"})
        elif kind in LATENT_NODES and kind != spec.latent_node:
            node["class_type"] = spec.latent_node
            if spec.latent_node == "EmptyHunyuanLatentVideo":
                inputs["length"] = 1
    return prompt


def sampler_chain(prompt: dict) -> dict[str, dict]:
    """{'original'|'unlearned': {'sampler': id, 'decode': id}}: the two KSampler -> VAEDecode chains, told apart by
    the MODEL they sample (the loader's, or Apply RAZOR Edit's)."""
    load, apply = model_loader(prompt), one_of(prompt, "RazorApplyEdit")
    chains = {}
    for k in ids_of(prompt, "KSampler"):
        source = prompt[k]["inputs"]["model"][0]
        decode = next(d for d in ids_of(prompt, "VAEDecode") if prompt[d]["inputs"]["samples"][0] == k)
        chains[{load: "original", apply: "unlearned"}[source]] = {"sampler": k, "decode": decode}
    assert set(chains) == {"original", "unlearned"}
    return chains


def resample(prompt: dict, chain: dict, model: list, clip: list, vae: list, tag: str) -> dict:
    """The workflow's 'unlearned' sampling nodes (same prompt text, seed, steps, latent) on another MODEL/CLIP/VAE,
    saving latent and image."""
    nodes = {}
    sampler = json.loads(json.dumps(prompt[chain["sampler"]]))
    for name in ("positive", "negative"):
        encode = json.loads(json.dumps(prompt[sampler["inputs"][name][0]]))
        encode["inputs"]["clip"] = clip
        nodes[f"{tag}_{name}"] = encode
        sampler["inputs"][name] = [f"{tag}_{name}", 0]
    latent = sampler["inputs"]["latent_image"][0]
    nodes[latent] = prompt[latent]
    sampler["inputs"]["model"] = model
    nodes[f"{tag}_k"] = sampler
    nodes[f"{tag}_dec"] = {"class_type": "VAEDecode", "inputs": {"samples": [f"{tag}_k", 0], "vae": vae}}
    nodes.update(save_nodes(f"{tag}_k", f"{tag}_dec", tag))
    return nodes


def save_nodes(sampler: str, decode: str, tag: str) -> dict:
    return {f"{tag}_latent_out": {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 0],
                                                                         "filename_prefix": f"ckpt_test/{tag}"}},
            f"{tag}_image_out": {"class_type": "SaveImage", "inputs": {"images": [decode, 0],
                                                                       "filename_prefix": f"ckpt_test/{tag}"}}}


def saved_latent(server: ComfyServer, ui_output: dict) -> torch.Tensor:
    entry, = ui_output["latents"]
    return load_file(str(server.base_dir / "output" / entry["subfolder"] / entry["filename"]))["latent_tensor"]


def link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)  # the same bytes without copying half a gigabyte
    except OSError:
        shutil.copy(source, target)


def file_delta(fh, mapped: str) -> torch.Tensor:
    """A parameter's change as the stock LoRA loader reads it: a full difference, or a LoRA pair's product."""
    for suffix, kind in ((".weight", "diff"), (".bias", "diff_b")):
        if mapped.endswith(suffix):
            stem = mapped[:-len(suffix)]
            if f"{stem}.{kind}" in fh.keys():
                return fh.get_tensor(f"{stem}.{kind}")
            # the one-hot selector factor is float8, the other float32: the loader multiplies them in float32
            return fh.get_tensor(f"{stem}.lora_up.weight").float() @ fh.get_tensor(f"{stem}.lora_down.weight").float()
    raise AssertionError(f"{mapped} is neither a weight nor a bias")


def edit_contents(edit_file: Path) -> tuple[list[dict], list[dict], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A saved edit file as the tests check it: its units and scores (RAZOR metadata), each parameter's change as the
    stock LoRA loader reads it, and per parameter the mask of elements that the units' slices cover."""
    with safe_open(str(edit_file), framework="pt") as fh:
        meta = fh.metadata()
        key_map = json.loads(meta["razor.key_map"])
        deltas = {param: file_delta(fh, mapped) for param, mapped in key_map.items()}
    units = json.loads(meta["razor.units"])
    covered = {param: torch.zeros_like(delta, dtype=torch.bool) for param, delta in deltas.items()}
    for unit in units:
        for s in unit["slices"]:
            view = covered[s["param"]] if s["dim"] is None else covered[s["param"]].narrow(s["dim"], s["start"],
                                                                                             s["length"])
            view.fill_(True)
    return units, json.loads(meta["razor.scores"]), deltas, covered
