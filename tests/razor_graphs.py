"""API-format graphs shared by the server tests and benchmarks: the RAZOR chain on the MiniCanvas demo model, and the
shipped real-checkpoint workflows shrunk for the CPU."""
from __future__ import annotations

import json
from pathlib import Path

from tests.comfy_server import REPO_ROOT, ComfyServer, ui_workflow_to_api_prompt

LATENT_NODES = ("EmptyLatentImage", "EmptySD3LatentImage")
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
    64x64 images, 4 sampler steps, two forget and two retain prompts, two rounds; the edit file saved under
    `filename_prefix`."""
    prompt = ui_workflow_to_api_prompt(json.loads(workflow_path(family).read_text()), server.object_info())
    for node in prompt.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind in LATENT_NODES:
            inputs.update(width=SIZE, height=SIZE, batch_size=1)
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


def sampler_chain(prompt: dict) -> dict[str, dict]:
    """{'original'|'unlearned': {'sampler': id, 'decode': id}}: the two KSampler -> VAEDecode chains, told apart by
    the MODEL they sample (the loader's, or Apply RAZOR Edit's)."""
    load, apply = one_of(prompt, "CheckpointLoaderSimple"), one_of(prompt, "RazorApplyEdit")
    chains = {}
    for k in ids_of(prompt, "KSampler"):
        source = prompt[k]["inputs"]["model"][0]
        decode = next(d for d in ids_of(prompt, "VAEDecode") if prompt[d]["inputs"]["samples"][0] == k)
        chains[{load: "original", apply: "unlearned"}[source]] = {"sampler": k, "decode": decode}
    assert set(chains) == {"original", "unlearned"}
    return chains
