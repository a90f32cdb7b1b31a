"""The real-checkpoint paths in a real ComfyUI server, on CPU: workflows/sd15_remove_style.json,
sd3_remove_style.json and sdxl_remove_style.json (made for GPU users with real checkpoints) run on tiny random
checkpoints that the stock Load Checkpoint detects as SD1.5, SD3 and SDXL (tests/tiny_checkpoints.py: SD1.5's UNet
cut to one level, a two-block MMDiT, full CLIP-L and VAE; tests/tiny_families.py: the SDXL class's smallest UNet,
KOALA-700M's, with SDXL's CLIP-L, CLIP-G and VAE; all random).

Random weights know no Van Gogh, so these tests check mechanics, not forgetting: each workflow runs as shipped (only
shrunk for CPU: 64x64 images, 4 steps, two forget and two retain prompts, two rounds), the edit changes only
existing weights and only inside the units it names (for SD3: head slices of the fused qkv), the edited model draws
other images, the original MODEL/CLIP stay bit-identical, and both saved formats (full checkpoint through the stock
Load Checkpoint, edit file through the stock Load LoRA) reproduce Apply RAZOR Edit's samples exactly (tolerance 0:
same latents, same PNGs).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tests.comfy_server import ComfyError, ComfyServer
from tests.razor_graphs import (LATENT_NODES, SIZE, cpu_prompt, edit_contents, ids_of, link_or_copy, one_of, resample,
                                sampler_chain, save_nodes, saved_latent, workflow_path)
from tests.tiny_checkpoints import TEXT_PREFIXES, UNET, write_tiny_checkpoint
from tests.tiny_families import write_sdxl_checkpoint

FAMILIES = ("sd15", "sd3", pytest.param("sdxl", marks=pytest.mark.full_width))
ROUNDTRIP_CKPT = "razor_{family}_unlearned.safetensors"   # the saved full checkpoint, copied into models/checkpoints
ROUNDTRIP_LORA = "razor_{family}_edit.safetensors"        # the saved edit file, copied into models/loras
EDIT_PREFIX, FULL_PREFIX = "razor/{family}_test_edit", "razor/{family}_test_full"


def fingerprint_prompt(prompt: dict, label: str) -> dict:
    """The workflow's own loader (same node, same inputs: ComfyUI hands every prompt the same cached MODEL/CLIP)
    and a fingerprint of what it loaded."""
    load = one_of(prompt, "CheckpointLoaderSimple")
    return {load: prompt[load], "fp": {"class_type": "RazorFingerprint", "inputs": {
        "model": [load, 0], "clip": [load, 1], "label": label}}}


@pytest.fixture(scope="module", params=FAMILIES)
def ckpt_run(comfy_server: ComfyServer, request):
    family = request.param
    base = comfy_server.base_dir
    workflow = json.loads(workflow_path(family).read_text())
    ckpt_name, = next(n for n in workflow["nodes"] if n["type"] == "CheckpointLoaderSimple")["widgets_values"]
    checkpoint = base / "models" / "checkpoints" / ckpt_name
    edit_prefix, full_prefix = EDIT_PREFIX.format(family=family), FULL_PREFIX.format(family=family)
    roundtrip_ckpt, roundtrip_lora = ROUNDTRIP_CKPT.format(family=family), ROUNDTRIP_LORA.format(family=family)
    edit_file = base / "output" / f"{edit_prefix}_00001_.safetensors"
    full_file = base / "output" / f"{full_prefix}_00001_.safetensors"
    written = [checkpoint, edit_file, full_file, base / "models" / "checkpoints" / roundtrip_ckpt,
               base / "models" / "loras" / roundtrip_lora]
    try:
        if family == "sdxl":
            write_sdxl_checkpoint(checkpoint)
        else:
            write_tiny_checkpoint(family, checkpoint)
        prompt = cpu_prompt(comfy_server, family, edit_prefix)
        chains = sampler_chain(prompt)
        fingerprint_before = comfy_server.run(fingerprint_prompt(prompt, "before"))["fp"]["text"][0]
        load, grow = one_of(prompt, "CheckpointLoaderSimple"), one_of(prompt, "RazorGrowEditSet")
        graph = dict(prompt)
        for tag, chain in chains.items():
            graph.update(save_nodes(chain["sampler"], chain["decode"], tag))
        graph["full"] = {"class_type": "RazorSaveUnlearnedModel", "inputs": {
            "edit": [grow, 0], "format": "full checkpoint", "filename_prefix": full_prefix,
            "model": [load, 0], "clip": [load, 1], "vae": [load, 2]}}
        outputs = comfy_server.run(graph, timeout=900)
        fingerprint_after = comfy_server.run(fingerprint_prompt(prompt, "after"))["fp"]["text"][0]
        # Round trip: the saved files through ComfyUI's stock loaders, sampled exactly as the workflow samples.
        link_or_copy(full_file, base / "models" / "checkpoints" / roundtrip_ckpt)
        link_or_copy(edit_file, base / "models" / "loras" / roundtrip_lora)
        roundtrip = {"reload": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": roundtrip_ckpt}},
                     load: prompt[load],
                     "lora": {"class_type": "LoraLoader", "inputs": {
                         "model": [load, 0], "clip": [load, 1], "lora_name": roundtrip_lora,
                         "strength_model": 1.0, "strength_clip": 1.0}}}
        roundtrip.update(resample(prompt, chains["unlearned"], ["reload", 0], ["reload", 1], ["reload", 2], "full"))
        roundtrip.update(resample(prompt, chains["unlearned"], ["lora", 0], ["lora", 1], [load, 2], "lora"))
        roundtrip_outputs = comfy_server.run(roundtrip, timeout=600)
        yield {"family": family, "prompt": prompt, "outputs": outputs, "roundtrip": roundtrip_outputs,
               "edit_file": edit_file, "edit_prefix": edit_prefix, "checkpoint": checkpoint,
               "fingerprints": (fingerprint_before, fingerprint_after)}
    finally:
        for path in written:  # 1.1 GB of checkpoints (two names are links): never leave them behind
            path.unlink(missing_ok=True)


def test_workflow_runs_and_previews_every_result(ckpt_run: dict, comfy_server: ComfyServer):
    prompt, outputs = ckpt_run["prompt"], ckpt_run["outputs"]
    for node in ids_of(prompt, "PreviewImage"):
        assert len(outputs[node]["images"]) == 1, f"preview {node} shows nothing"
    stitch_preview = next(k for k in ids_of(prompt, "PreviewImage")
                          if prompt[prompt[k]["inputs"]["images"][0]]["class_type"] == "ImageStitch")
    side_by_side = comfy_server.images(outputs[stitch_preview])
    spacing = prompt[one_of(prompt, "ImageStitch")]["inputs"]["spacing_width"]
    assert side_by_side.shape == (1, SIZE, 2 * SIZE + spacing, 3)
    heatmap = comfy_server.images(outputs[one_of(prompt, "RazorScoreHeads")])
    assert heatmap.shape[0] == 1 and heatmap.shape[1] > 100
    report = outputs[one_of(prompt, "PreviewAny")]["text"][0]
    assert "Van Gogh" in report and "edited units:" in report
    saved = outputs[one_of(prompt, "RazorSaveUnlearnedModel")]["text"][0]
    assert f"saved {ckpt_run['edit_prefix']}_00001_.safetensors" in saved


def test_edit_changes_existing_weights_only_inside_its_units(ckpt_run: dict):
    with safe_open(str(ckpt_run["checkpoint"]), framework="pt") as fh:
        shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    units, scores, deltas, covered = edit_contents(ckpt_run["edit_file"])
    assert units and deltas
    text_prefix = TEXT_PREFIXES.get(ckpt_run["family"])  # SDXL's edit is the UNet's alone
    assert {u["name"].split(".", 1)[0] for u in units} <= {"diffusion_model", "clip_l"}
    if ckpt_run["family"] == "sd3":
        # blocks=all: gradients reached ComfyUI's CLIP-L (in-place residual adds, fp16 weights) and MMDiT's heads
        # (fused qkv) in both streams of the joint attention
        towers = ["diffusion_model", "clip_l"] + [f"diffusion_model.joint_blocks.0.{stream}.attn.head"
                                                  for stream in ("context_block", "x_block")]
    else:
        # blocks=denoiser: the whole edit is in the MODEL; the UNet's cross-attention keys/values are units
        towers = ["diffusion_model"]
        assert all(u["name"].startswith("diffusion_model.") for u in units)
        assert any(".attn2.kv" in u["name"] for u in units) and not any(s["unit"].startswith("clip_l")
                                                                         for s in scores)
        importances = [s["importance"] for s in scores if ".attn2.kv" in s["unit"]]
        assert importances and max(importances) > 0
    for tower in towers:
        importances = [s["importance"] for s in scores if s["unit"].startswith(tower)]
        assert importances and all(np.isfinite(importances)) and max(importances) > 0, tower
    for param, delta in deltas.items():
        key = UNET + param[len("diffusion_model."):] if param.startswith("diffusion_model.") else \
            text_prefix + param[len("clip_l.transformer.text_model."):]
        assert key in shapes, f"the edit changes {param}, which the checkpoint does not have"
        assert tuple(delta.shape) == shapes[key]
        assert delta.dtype == torch.float32, f"{param}: the fp16 text encoder's steps must be kept in float32"
        assert torch.isfinite(delta).all()
        assert not delta[~covered[param]].any(), f"{param} changed outside the edited units' slices"
    assert any(delta.abs().sum() > 0 for delta in deltas.values())


def test_unlearned_model_draws_differently_and_the_original_is_untouched(ckpt_run: dict,
                                                                          comfy_server: ComfyServer):
    outputs = ckpt_run["outputs"]
    original = comfy_server.images(outputs["original_image_out"])
    unlearned = comfy_server.images(outputs["unlearned_image_out"])
    assert np.abs(original.astype(int) - unlearned.astype(int)).max() > 0
    assert not torch.equal(saved_latent(comfy_server, outputs["original_latent_out"]),
                           saved_latent(comfy_server, outputs["unlearned_latent_out"]))
    before, after = ckpt_run["fingerprints"]
    assert before == after


def test_one_checkpoint_loaded_twice_has_one_fingerprint(ckpt_run: dict, comfy_server: ComfyServer):
    """ComfyUI leaves SD1.5's unused CLIP text_projection uninitialised (the files never carry it): the fingerprint
    must cover the weights, not that memory."""
    second = ckpt_run["checkpoint"].with_name("razor_second_load.safetensors")
    link_or_copy(ckpt_run["checkpoint"], second)  # another name, so ComfyUI really loads the file again
    try:
        graph = {"again": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": second.name}},
                 "fp": {"class_type": "RazorFingerprint", "inputs": {"model": ["again", 0], "clip": ["again", 1],
                                                                     "label": "second load"}}}
        assert comfy_server.run(graph)["fp"]["text"][0] == ckpt_run["fingerprints"][0]
    finally:
        second.unlink(missing_ok=True)


@pytest.mark.parametrize("route", ["full", "lora"])
def test_saved_model_reloads_through_stock_loaders_to_the_same_samples(ckpt_run: dict, comfy_server: ComfyServer,
                                                                       route: str):
    """full: Save Unlearned Model (full checkpoint) -> stock Load Checkpoint; lora: the edit file -> stock Load
    LoRA on the original. Both must reproduce Apply RAZOR Edit exactly (tolerance 0): all three routes compute
    weight + delta in float32 and round it the same way to the weight's dtype (float32 for the UNet on CPU, so exact;
    float16 for the CLIP, round-to-nearest), and the full checkpoint stores those rounded weights as they are."""
    applied = saved_latent(comfy_server, ckpt_run["outputs"]["unlearned_latent_out"])
    reloaded = saved_latent(comfy_server, ckpt_run["roundtrip"][f"{route}_latent_out"])
    assert torch.equal(reloaded, applied), f"max |difference| {float((reloaded - applied).abs().max())}"
    image = comfy_server.images(ckpt_run["roundtrip"][f"{route}_image_out"])
    assert np.array_equal(image, comfy_server.images(ckpt_run["outputs"]["unlearned_image_out"]))


def test_pixel_images_for_a_latent_model_get_a_clear_error(ckpt_run: dict, comfy_server: ComfyServer):
    """Forget images stand in for the model's own samples, which for SD1.5 are 4-channel latents: connecting
    pixel images must say so (instead of a shape error deep inside the UNet)."""
    prompt = ckpt_run["prompt"]
    forget, score = one_of(prompt, "RazorLoadForgetSet"), one_of(prompt, "RazorScoreHeads")
    latent = next(k for k, n in prompt.items() if n["class_type"] in LATENT_NODES)
    graph = {k: prompt[k] for k in (one_of(prompt, "CheckpointLoaderSimple"), latent)}
    graph["pixels"] = {"class_type": "EmptyImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 2,
                                                              "color": 0}}
    graph[forget] = {"class_type": "RazorLoadForgetSet",
                     "inputs": {**prompt[forget]["inputs"], "images": ["pixels", 0]}}
    graph[score] = prompt[score]
    graph["out"] = {"class_type": "PreviewImage", "inputs": {"images": [score, 1]}}
    with pytest.raises(ComfyError, match="images can only be used with pixel-space models"):
        comfy_server.run(graph)
