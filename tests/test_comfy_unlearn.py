"""The shipped MiniCanvas workflows in a real ComfyUI server, converted from their UI JSON: the chains forget what
they say (judged by the MiniCanvas classifiers) and keep the rest, the original MODEL/CLIP stay bit-identical, and
the saved edit file re-applied by the stock LoRA loader draws the same images as Apply RAZOR Edit."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors import safe_open

from tests.comfy_server import REPO_ROOT, ComfyServer, ui_workflow_to_api_prompt
from tests.test_comfy_demo_model import judged

BATCH = 8
WORKFLOWS = REPO_ROOT / "workflows"
RAZOR_NODES = ("RazorLoadForgetSet", "RazorScoreHeads", "RazorGrowEditSet", "RazorApplyEdit",
               "RazorSaveUnlearnedModel", "RazorFingerprint")


def add_sampling(graph: dict, tag: str, model: list, clip: list, prompt: str, seed: int = 7,
                 vae: list | None = None) -> str:
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
        f"{tag}_dec": {"class_type": "VAEDecode", "inputs": {"samples": [f"{tag}_k", 0], "vae": vae or ["load", 2]}},
        f"{tag}_save": {"class_type": "SaveImage", "inputs": {"images": [f"{tag}_dec", 0],
                                                              "filename_prefix": f"razor/{tag}"}},
    })
    return f"{tag}_save"


def workflow_prompt(server: ComfyServer, name: str) -> dict:
    workflow = json.loads((WORKFLOWS / f"{name}.json").read_text())
    return ui_workflow_to_api_prompt(workflow, server.object_info())


def node_of(prompt: dict, class_type: str) -> str:
    return next(i for i, n in prompt.items() if n["class_type"] == class_type)


def stitched_pairs(server: ComfyServer, prompt: dict, outputs: dict) -> tuple[np.ndarray, np.ndarray]:
    """The before and after images behind a workflow's ImageStitch preview (top = before, bottom = after)."""
    stitch = node_of(prompt, "ImageStitch")
    preview = next(i for i, n in prompt.items() if n["class_type"] == "PreviewImage"
                   and n["inputs"]["images"][0] == stitch)
    pairs = server.images(outputs[preview])
    return pairs[:, :32], pairs[:, -32:]


@pytest.fixture(scope="module")
def neon_run(comfy_server: ComfyServer) -> dict:
    """The shipped style workflow, plus a retained prompt sampled before and after."""
    prompt = workflow_prompt(comfy_server, "minicanvas_remove_style")
    load, apply = node_of(prompt, "RazorLoadMiniCanvas"), node_of(prompt, "RazorApplyEdit")
    graph = {k: v for k, v in prompt.items()}
    kept = add_sampling(graph, "kept", [apply, 0], [apply, 1], "a heart in brick style", vae=[load, 2])
    fingerprint_before = comfy_server.run(fingerprint_graph("before"))["fp"]["text"][0]
    outputs = comfy_server.run(graph, timeout=1200)
    before, after = stitched_pairs(comfy_server, prompt, outputs)
    return {"prompt": prompt, "outputs": outputs, "fingerprint_before": fingerprint_before,
            "images": {"before": before, "after": after, "kept": comfy_server.images(outputs[kept])}}


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


def test_the_style_workflow_forgets_neon_and_keeps_the_rest(neon_run: dict):
    images = neon_run["images"]
    before_styles, _ = judged(images["before"])
    after_styles, after_objects = judged(images["after"])
    kept_styles, kept_objects = judged(images["kept"])
    assert before_styles.count("neon") >= 7
    assert after_styles.count("neon") <= 1, after_styles          # forgotten
    assert after_objects.count("star") >= 6, after_objects        # the object is still drawn
    assert kept_styles.count("brick") >= 7 and kept_objects.count("heart") >= 6  # retained


def test_previews_and_report_reach_the_history(neon_run: dict, comfy_server: ComfyServer):
    prompt, outputs = neon_run["prompt"], neon_run["outputs"]
    heat = comfy_server.images(outputs[node_of(prompt, "RazorScoreHeads")])
    curve = comfy_server.images(outputs[node_of(prompt, "RazorGrowEditSet")])
    assert heat.shape[0] == 1 and heat.shape[1] > 100 and curve.shape[0] == 1
    report = outputs[node_of(prompt, "PreviewAny")]["text"][0]
    assert "forgot 'neon'" in report and "edited units:" in report
    assert "saved razor/neon_00001_.safetensors" in outputs[node_of(prompt, "RazorSaveUnlearnedModel")]["text"][0]


def test_the_other_workflows_run_and_do_what_they_say(neon_run: dict, comfy_server: ComfyServer):
    loras = comfy_server.base_dir / "models" / "loras"
    loras.mkdir(parents=True, exist_ok=True)
    shutil.copy(comfy_server.base_dir / "output" / "razor" / "neon_00001_.safetensors",
                loras / "razor_neon_edit.safetensors")
    expectations = {  # workflow: (judge style or object, the concept, the prompt's other concept)
        "minicanvas_remove_object": ("object", "star", "sunset"),
        "minicanvas_clip_text_only": ("style", "neon", "star"),
        "minicanvas_reapply_saved_edit": ("style", "neon", "star"),
    }
    for name, (domain, concept, other) in expectations.items():
        prompt = workflow_prompt(comfy_server, name)
        before, after = stitched_pairs(comfy_server, prompt, comfy_server.run(prompt, timeout=1200))
        (b_styles, b_objects), (a_styles, a_objects) = judged(before), judged(after)
        forgotten_before, forgotten_after = (b_styles, a_styles) if domain == "style" else (b_objects, a_objects)
        kept_after = a_objects if domain == "style" else a_styles
        assert forgotten_before.count(concept) >= 6, (name, forgotten_before)
        assert forgotten_after.count(concept) <= 1, (name, forgotten_after)
        assert kept_after.count(other) >= 6, (name, kept_after)
        if name == "minicanvas_reapply_saved_edit":  # the MODEL alone, with the stock CLIP, reproduces the edit
            assert np.abs(after.astype(int) - neon_run["images"]["after"].astype(int)).max() <= 1


def test_the_edit_file_holds_stock_lora_keys_and_metadata(neon_run: dict, comfy_server: ComfyServer):
    saved = comfy_server.base_dir / "output" / "razor" / "neon_00001_.safetensors"
    with safe_open(str(saved), framework="pt") as fh:
        keys = list(fh.keys())
        meta = fh.metadata()
    assert keys and all(k.endswith((".diff", ".diff_b", ".lora_up.weight", ".lora_down.weight")) for k in keys)
    assert all(k.startswith("diffusion_model.") for k in keys)  # the default edit lives in the MODEL
    assert meta["razor.concept"] == "style:neon" and meta["razor.pack_version"]


def fingerprint_graph(label: str) -> dict:
    return {"load": {"class_type": "RazorLoadMiniCanvas", "inputs": {}},
            "fp": {"class_type": "RazorFingerprint", "inputs": {"model": ["load", 0], "clip": ["load", 1],
                                                                 "label": label}}}


def test_the_original_model_and_clip_stay_bit_identical(neon_run: dict, comfy_server: ComfyServer):
    # The loader's outputs are cached and shared by every prompt; a fresh label makes the fingerprint recompute.
    after = comfy_server.run(fingerprint_graph("after the unlearning prompts"))["fp"]["text"][0]
    assert after == neon_run["fingerprint_before"]


def test_scores_from_another_model_are_refused(neon_run: dict, comfy_server: ComfyServer):
    prompt = workflow_prompt(comfy_server, "minicanvas_remove_style")  # cached: the scores are not recomputed
    load, grow = node_of(prompt, "RazorLoadMiniCanvas"), node_of(prompt, "RazorGrowEditSet")
    graph = {k: v for k, v in prompt.items() if k in (load, grow) or v["class_type"] in (
        "RazorLoadForgetSet", "RazorScoreHeads", "EmptyChromaRadianceLatentImage")}
    graph["other"] = {"class_type": "ModelSamplingDiscrete", "inputs": {
        "model": [load, 0], "sampling": "eps", "zsnr": False}}
    graph[grow]["inputs"]["model"] = ["other", 0]
    graph["out"] = {"class_type": "PreviewImage", "inputs": {"images": [grow, 1]}}
    with pytest.raises(Exception, match="another MODEL"):
        comfy_server.run(graph, timeout=1200)
