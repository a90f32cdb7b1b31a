"""The RAZOR nodes in a real ComfyUI server on the MiniCanvas demo model: the chain forgets a style (judged by the
MiniCanvas classifiers), keeps the others, leaves the original MODEL/CLIP bit-identical, and the saved edit file
re-applied by the stock LoRA loader draws the same images as Apply RAZOR Edit."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from tests.comfy_server import ComfyServer
from tests.test_comfy_demo_model import judged

BATCH = 8
RAZOR_NODES = ("RazorLoadForgetSet", "RazorScoreHeads", "RazorGrowEditSet", "RazorApplyEdit",
               "RazorSaveUnlearnedModel", "RazorFingerprint")


def unlearn_graph(concept: str, kind: str = "style") -> dict:
    """Loader -> forget set (MiniCanvas preset) -> scores -> growth -> apply -> save the edit."""
    return {
        "load": {"class_type": "RazorLoadMiniCanvas", "inputs": {}},
        "fs": {"class_type": "RazorLoadForgetSet", "inputs": {
            "concept": concept, "kind": kind, "preset": "MiniCanvas demo", "forget_prompts": "", "anchor": "",
            "retain_prompts": ""}},
        "latent": {"class_type": "EmptyChromaRadianceLatentImage", "inputs": {"width": 32, "height": 32,
                                                                               "batch_size": 1}},
        "score": {"class_type": "RazorScoreHeads", "inputs": {
            "model": ["load", 0], "clip": ["load", 1], "forget_set": ["fs", 0], "latent": ["latent", 0],
            "granularity": "heads", "blocks": "all", "seed": 0, "steps": 20, "cfg": 4.0, "sampler_name": "euler",
            "scheduler": "simple"}},
        "grow": {"class_type": "RazorGrowEditSet", "inputs": {
            "model": ["load", 0], "clip": ["load", 1], "forget_set": ["fs", 0], "scores": ["score", 0],
            "method": "razor", "max_initial_units": 3, "max_rounds": 3, "forget_target": 0.75,
            "retain_tolerance": 0.05}},
        "apply": {"class_type": "RazorApplyEdit", "inputs": {
            "model": ["load", 0], "edit": ["grow", 0], "strength": 1.0, "clip": ["load", 1]}},
        "save": {"class_type": "RazorSaveUnlearnedModel", "inputs": {
            "edit": ["grow", 0], "format": "edit file", "filename_prefix": f"razor/test_{concept}"}},
    }


def add_sampling(graph: dict, tag: str, model: list, clip: list, prompt: str, seed: int = 1) -> str:
    """CLIPTextEncode -> KSampler -> VAEDecode -> SaveImage on the given MODEL/CLIP; returns the save node's id."""
    graph.update({
        f"{tag}_pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": prompt}},
        f"{tag}_neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": ""}},
        f"{tag}_latent": {"class_type": "EmptyChromaRadianceLatentImage", "inputs": {
            "width": 32, "height": 32, "batch_size": BATCH}},
        f"{tag}_k": {"class_type": "KSampler", "inputs": {
            "model": model, "positive": [f"{tag}_pos", 0], "negative": [f"{tag}_neg", 0],
            "latent_image": [f"{tag}_latent", 0], "seed": seed, "steps": 20, "cfg": 4.0, "sampler_name": "euler",
            "scheduler": "simple", "denoise": 1.0}},
        f"{tag}_dec": {"class_type": "VAEDecode", "inputs": {"samples": [f"{tag}_k", 0], "vae": ["load", 2]}},
        f"{tag}_save": {"class_type": "SaveImage", "inputs": {"images": [f"{tag}_dec", 0],
                                                              "filename_prefix": f"razor/{tag}"}},
    })
    return f"{tag}_save"


@pytest.fixture(scope="module")
def neon_run(comfy_server: ComfyServer) -> dict:
    graph = unlearn_graph("neon")
    saves = {
        "before": add_sampling(graph, "before", ["load", 0], ["load", 1], "a star in neon style"),
        "after": add_sampling(graph, "after", ["apply", 0], ["apply", 1], "a star in neon style"),
        "kept": add_sampling(graph, "kept", ["apply", 0], ["apply", 1], "a heart in brick style"),
        "kept_before": add_sampling(graph, "kept_before", ["load", 0], ["load", 1], "a heart in brick style"),
    }
    fingerprint_before = comfy_server.run(fingerprint_graph("before"))["fp"]["text"][0]
    outputs = comfy_server.run(graph, timeout=600)
    images = {name: comfy_server.images(outputs[node]) for name, node in saves.items()}
    return {"outputs": outputs, "images": images, "fingerprint_before": fingerprint_before}


def test_every_razor_node_is_documented(comfy_server: ComfyServer):
    info = comfy_server.object_info()
    for node in RAZOR_NODES:
        assert node in info, f"{node} is not registered"
        definition = info[node]
        assert definition["category"] == "unlearning/razor" and len(definition["description"]) > 80
        for section in ("required", "optional"):
            for name, spec in definition["input"].get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{node}.{name} has no tooltip"
        assert all(definition["output_tooltips"])


def test_the_chain_forgets_the_style_and_keeps_the_others(neon_run: dict):
    images = neon_run["images"]
    before_styles, _ = judged(images["before"])
    after_styles, after_objects = judged(images["after"])
    kept_styles, kept_objects = judged(images["kept"])
    assert before_styles.count("neon") >= 7
    assert after_styles.count("neon") <= 1, after_styles          # forgotten
    assert after_objects.count("star") >= 6, after_objects        # the object is still drawn
    assert kept_styles.count("brick") >= 7 and kept_objects.count("heart") >= 6  # retained
    assert not np.array_equal(images["before"], images["after"])


def test_previews_and_report_reach_the_history(neon_run: dict, comfy_server: ComfyServer):
    outputs = neon_run["outputs"]
    heat = comfy_server.images(outputs["score"])
    curve = comfy_server.images(outputs["grow"])
    assert heat.shape[0] == 1 and heat.shape[1] > 100 and curve.shape[0] == 1
    assert "saved razor/test_neon_00001_.safetensors" in outputs["save"]["text"][0]


def test_edit_file_through_the_stock_lora_loader_draws_the_same_images(neon_run: dict,
                                                                       comfy_server: ComfyServer):
    saved = comfy_server.base_dir / "output" / "razor" / "test_neon_00001_.safetensors"
    with safe_open(str(saved), framework="pt") as fh:
        keys = list(fh.keys())
        assert fh.metadata()["razor.concept"] == "style:neon"
    assert keys and all(k.endswith((".diff", ".diff_b")) for k in keys)
    loras = comfy_server.base_dir / "models" / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    shutil.copy(saved, loras / "neon_edit.safetensors")
    graph = {"load": {"class_type": "RazorLoadMiniCanvas", "inputs": {}},
             "lora": {"class_type": "LoraLoader", "inputs": {
                 "model": ["load", 0], "clip": ["load", 1], "lora_name": "neon_edit.safetensors",
                 "strength_model": 1.0, "strength_clip": 1.0}}}
    save = add_sampling(graph, "lora", ["lora", 0], ["lora", 1], "a star in neon style")
    via_lora = comfy_server.images(comfy_server.run(graph)[save])
    difference = np.abs(via_lora.astype(int) - neon_run["images"]["after"].astype(int)).max()
    assert difference <= 1, f"stock LoRA loader and Apply RAZOR Edit differ by {difference}/255"


def fingerprint_graph(label: str) -> dict:
    return {"load": {"class_type": "RazorLoadMiniCanvas", "inputs": {}},
            "fp": {"class_type": "RazorFingerprint", "inputs": {"model": ["load", 0], "clip": ["load", 1],
                                                                 "label": label}}}


def test_the_original_model_and_clip_stay_bit_identical(neon_run: dict, comfy_server: ComfyServer):
    # The loader's outputs are cached and shared by every prompt; a fresh label makes the fingerprint recompute.
    after = comfy_server.run(fingerprint_graph("after the unlearning prompts"))["fp"]["text"][0]
    assert after == neon_run["fingerprint_before"]


def test_scores_from_another_model_are_refused(neon_run: dict, comfy_server: ComfyServer):
    graph = unlearn_graph("neon")  # the same scoring as the first run: ComfyUI serves it from its cache
    graph["other"] = {"class_type": "ModelSamplingDiscrete", "inputs": {
        "model": ["load", 0], "sampling": "eps", "zsnr": False}}
    graph["grow"]["inputs"]["model"] = ["other", 0]
    for node in ("apply", "save"):
        del graph[node]
    graph["out"] = {"class_type": "PreviewImage", "inputs": {"images": ["grow", 1]}}
    with pytest.raises(Exception, match="another MODEL"):
        comfy_server.run(graph, timeout=600)
