"""The MiniCanvas demo model inside a real ComfyUI server: the loader node registers with its documentation, and
the stock CLIPTextEncode -> KSampler -> VAEDecode chain draws what the prompt asks for (judged by the MiniCanvas
classifiers)."""
import json
import re

import numpy as np
import pytest
import torch

from razor_core.minicanvas import data, pipeline
from razor_core.minicanvas.classifier import to_model_input
from tests.comfy_server import REPO_ROOT, ComfyServer, ui_workflow_to_api_prompt

NODE_ID = "RazorLoadMiniCanvas"
PROMPT, SEED = "a star in neon style", 1
BATCH = 8
MIN_RECOGNISED = 6  # of BATCH; the model draws these prompts right 8/8 (style) and 7-8/8 (object) on fixed seeds


def sample_prompt(positive: str, seed: int) -> dict:
    """API prompt: loader -> CLIPTextEncode (positive, empty negative) -> KSampler -> VAEDecode -> SaveImage."""
    return {
        "1": {"class_type": NODE_ID, "inputs": {}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": positive}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": "EmptyChromaRadianceLatentImage", "inputs": {"width": 32, "height": 32,
                                                                          "batch_size": BATCH}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "seed": seed, "steps": 20, "cfg": 4.0, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "minicanvas/test"}},
    }


def judged(images: np.ndarray) -> tuple[list[str], list[str]]:
    """Style and object names the MiniCanvas classifiers give each (N, H, W, 3) uint8 image."""
    x = to_model_input(torch.from_numpy(images))
    with torch.no_grad():
        styles = pipeline.load_classifier("style")(x).argmax(-1)
        objects = pipeline.load_classifier("object")(x).argmax(-1)
    return [data.STYLES[i] for i in styles], [data.OBJECTS[i] for i in objects]


def assert_draws(images: np.ndarray, style: str, obj: str) -> None:
    assert images.shape == (BATCH, 32, 32, 3)
    styles, objects = judged(images)
    assert styles.count(style) >= MIN_RECOGNISED, f"expected {style}, judged {styles}"
    assert objects.count(obj) >= MIN_RECOGNISED, f"expected {obj}, judged {objects}"


def test_loader_is_registered_with_description_and_tooltips(comfy_server: ComfyServer):
    info = comfy_server.object_info(NODE_ID)[NODE_ID]
    assert info["display_name"] == "Load MiniCanvas demo model"
    assert info["category"] == "unlearning/razor"
    assert info["output"] == ["MODEL", "CLIP", "VAE"]
    assert len(info["description"]) > 50
    assert len(info["output_tooltips"]) == 3 and all(len(t) > 20 for t in info["output_tooltips"])
    for section in ("required", "optional"):  # no inputs today; any added later must carry a tooltip
        assert all(spec[1].get("tooltip") for spec in info["input"].get(section, {}).values())


def test_server_log_has_no_import_error_for_the_pack(comfy_server: ComfyServer):
    log = comfy_server.log_text()
    assert re.search(rf"seconds: {re.escape(str(comfy_server.pack_dir))}$", log, re.MULTILINE), log[-3000:]
    pack_lines = [line for line in log.splitlines() if comfy_server.pack_dir.name in line]
    failures = r"IMPORT FAILED|Cannot import|Error|Skip|did not|not callable"
    assert not [line for line in pack_lines if re.search(failures, line)]


@pytest.fixture(scope="module")
def neon_star_images(comfy_server: ComfyServer) -> np.ndarray:
    outputs = comfy_server.run(sample_prompt(PROMPT, SEED))
    return comfy_server.images(outputs["7"])


def test_stock_nodes_sample_the_prompted_style_and_object(neon_star_images: np.ndarray):
    assert_draws(neon_star_images, "neon", "star")


def test_stock_sampling_reproduces_razor_core_pipeline(neon_star_images: np.ndarray):
    # KSampler's noise for a seed: one torch.randn over the whole latent batch after torch.manual_seed(seed)
    noise = torch.randn((BATCH, 3, 32, 32), generator=torch.Generator().manual_seed(SEED))
    pipe = pipeline.load_pipeline()
    with torch.no_grad():
        cond = pipe.encode([PROMPT] * BATCH)
        x = pipeline.euler_sample(pipe.velocity, noise, cond, pipe.encode([""]).expand_as(cond), steps=20, cfg=4.0)
    # the pixel-space VAE maps [-1, 1] to [0, 1]; SaveImage truncates 255 * image to uint8
    expected = (255.0 * ((x.clamp(-1, 1) + 1) / 2)).permute(0, 2, 3, 1).numpy().astype(np.uint8)
    assert np.abs(neon_star_images.astype(int) - expected.astype(int)).max() <= 1


def test_example_workflow_converts_and_runs(comfy_server: ComfyServer):
    workflow = json.loads((REPO_ROOT / "workflows" / "minicanvas_sample.json").read_text())
    prompt = ui_workflow_to_api_prompt(workflow, comfy_server.object_info())
    assert {n["class_type"] for n in prompt.values()} == {
        NODE_ID, "CLIPTextEncode", "EmptyChromaRadianceLatentImage", "KSampler", "VAEDecode", "PreviewImage"}
    sampler = next(n["inputs"] for n in prompt.values() if n["class_type"] == "KSampler")
    settings = (sampler["seed"], sampler["steps"], sampler["cfg"], sampler["sampler_name"], sampler["scheduler"])
    assert settings == (7, 20, 4, "euler", "simple")
    preview_id = next(i for i, n in prompt.items() if n["class_type"] == "PreviewImage")
    outputs = comfy_server.run(prompt)
    assert_draws(comfy_server.images(outputs[preview_id]), "sunset", "heart")


def test_converter_refuses_a_node_the_server_does_not_know(comfy_server: ComfyServer):
    workflow = {"nodes": [{"id": 1, "type": "NoSuchNode", "mode": 0, "widgets_values": []}], "links": []}
    with pytest.raises(ValueError, match="NoSuchNode"):
        ui_workflow_to_api_prompt(workflow, comfy_server.object_info())
