"""API-format graphs of the RAZOR chain on the MiniCanvas demo model, shared by the server tests and benchmarks."""
from __future__ import annotations


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
