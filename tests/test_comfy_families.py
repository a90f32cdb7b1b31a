"""The families ComfyUI users load in parts (Load Diffusion Model, Load CLIP, Load VAE), through a real server on
the CPU: Flux-dev runs workflows/flux_dev_remove_style.json as shipped (shrunk as tests/razor_graphs.cpu_prompt
does), Chroma, Lumina 2 and Wan 2.1 run the same graph with their own diffusion model, text-encoder type and latent
node. The files are tiny random ones that the stock loaders detect as each family (tests/tiny_families.py); CLIP-L
stands in for the families' large text encoders (T5-XXL, Gemma, UMT5), which no CPU test can hold.

Random weights know no Van Gogh: these tests check mechanics. The default chain (blocks=denoiser) scores the
family's own units (Flux/Chroma single-stream heads, Lumina's refiner blocks, Wan's cross-attention), the edit changes
only the slices of the units it names, the edited MODEL draws other latents, the loaded MODEL and CLIP stay
bit-identical, and the saved edit file through the stock LoraLoaderModelOnly reproduces Apply RAZOR Edit's samples
exactly (tolerance 0). Wan also runs with Load Diffusion Model's `weight_dtype` fp8_e4m3fn (weights stored in fp8,
computed in float32: RAZOR's gradients are float32, and both ways of applying the edit round it onto the fp8
weights alike)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open

from tests.comfy_server import ComfyServer
from tests.razor_graphs import (edit_contents, family_files, family_prompt, link_or_copy, model_loader, one_of,
                                resample, sampler_chain, save_nodes, saved_latent)
from tests.tiny_families import FAMILIES, write_family_files

# Units only the family's own layout has: proof that the stock loader built that family and that it is scored.
OWN_UNITS = {"flux_dev": "single_blocks.0.head", "chroma": "single_blocks.0.head",
             "lumina2": "context_refiner.0.attention.head", "wan": "blocks.0.cross_attn.head"}


def loaders(prompt: dict) -> tuple[str, str, str]:
    return model_loader(prompt), one_of(prompt, "CLIPLoader"), one_of(prompt, "VAELoader")


def fingerprint_prompt(prompt: dict, label: str) -> dict:
    model, clip, _ = loaders(prompt)
    return {model: prompt[model], clip: prompt[clip],
            "fp": {"class_type": "RazorFingerprint", "inputs": {"model": [model, 0], "clip": [clip, 0],
                                                                 "label": label}}}


FAMILY_RUNS = [pytest.param((family, "default"), id=family, marks=() if family == "wan" else pytest.mark.full_width)
               for family in FAMILIES] + [pytest.param(("wan", "fp8_e4m3fn"), id="wan-fp8")]


@pytest.fixture(scope="module", params=FAMILY_RUNS)
def family_run(comfy_server: ComfyServer, request):
    family, weight_dtype = request.param
    base, paths = comfy_server.base_dir, family_files(comfy_server.base_dir, family)
    edit_prefix = f"razor/{family}_test_edit"
    edit_file = base / "output" / f"{edit_prefix}_00001_.safetensors"
    lora = base / "models" / "loras" / f"razor_{family}_edit.safetensors"
    try:
        write_family_files(family, paths["diffusion_model"], paths["clip_l"], paths["vae"])
        prompt = family_prompt(comfy_server, family, edit_prefix, weight_dtype)
        chains = sampler_chain(prompt)
        fingerprint_before = comfy_server.run(fingerprint_prompt(prompt, "before"))["fp"]["text"][0]
        graph = dict(prompt)
        for tag, chain in chains.items():
            graph.update(save_nodes(chain["sampler"], chain["decode"], tag))
        outputs = comfy_server.run(graph, timeout=1200)
        fingerprint_after = comfy_server.run(fingerprint_prompt(prompt, "after"))["fp"]["text"][0]
        link_or_copy(edit_file, lora)
        model, clip, vae = loaders(prompt)
        roundtrip = {model: prompt[model], clip: prompt[clip], vae: prompt[vae],
                     "lora": {"class_type": "LoraLoaderModelOnly", "inputs": {
                         "model": [model, 0], "lora_name": lora.name, "strength_model": 1.0}}}
        roundtrip.update(resample(prompt, chains["unlearned"], ["lora", 0], [clip, 0], [vae, 0], "lora"))
        roundtrip_outputs = comfy_server.run(roundtrip, timeout=600)
        yield {"family": family, "prompt": prompt, "outputs": outputs, "roundtrip": roundtrip_outputs,
               "edit_file": edit_file, "diffusion_model": paths["diffusion_model"],
               "fingerprints": (fingerprint_before, fingerprint_after)}
    finally:
        for path in (paths["diffusion_model"], paths["vae"], edit_file, lora):
            path.unlink(missing_ok=True)


def test_workflow_runs_and_scores_the_familys_own_units(family_run: dict, comfy_server: ComfyServer):
    prompt, outputs = family_run["prompt"], family_run["outputs"]
    report = outputs[one_of(prompt, "PreviewAny")]["text"][0]
    assert "Van Gogh" in report and "edited units:" in report
    heatmap = comfy_server.images(outputs[one_of(prompt, "RazorScoreHeads")])
    assert heatmap.shape[0] == 1 and heatmap.shape[1] > 100
    _, scores, _, _ = edit_contents(family_run["edit_file"])
    own = [s["importance"] for s in scores if OWN_UNITS[family_run["family"]] in s["unit"]]
    assert own and max(own) > 0, f"no scored {OWN_UNITS[family_run['family']]} units"
    assert all(s["unit"].startswith("diffusion_model.") for s in scores)  # CLIP-L is never a candidate here
    assert all(np.isfinite(s["importance"]) for s in scores)


def test_edit_changes_existing_weights_only_inside_its_units(family_run: dict):
    with safe_open(str(family_run["diffusion_model"]), framework="pt") as fh:
        shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    units, _, deltas, covered = edit_contents(family_run["edit_file"])
    assert units and deltas
    for param, delta in deltas.items():
        key = param.removeprefix("diffusion_model.")
        assert key in shapes, f"the edit changes {param}, which the diffusion model does not have"
        assert tuple(delta.shape) == shapes[key]
        assert torch.isfinite(delta).all()
        assert not delta[~covered[param]].any(), f"{param} changed outside the edited units' slices"
    assert any(delta.abs().sum() > 0 for delta in deltas.values())


def test_unlearned_model_draws_differently_and_the_original_is_untouched(family_run: dict,
                                                                          comfy_server: ComfyServer):
    outputs = family_run["outputs"]
    assert not torch.equal(saved_latent(comfy_server, outputs["original_latent_out"]),
                           saved_latent(comfy_server, outputs["unlearned_latent_out"]))
    before, after = family_run["fingerprints"]
    assert before == after


def test_edit_file_reloads_through_the_model_only_lora_loader_to_the_same_samples(family_run: dict,
                                                                                 comfy_server: ComfyServer):
    applied = saved_latent(comfy_server, family_run["outputs"]["unlearned_latent_out"])
    reloaded = saved_latent(comfy_server, family_run["roundtrip"]["lora_latent_out"])
    assert torch.equal(reloaded, applied), f"max |difference| {float((reloaded - applied).abs().max())}"
    image = comfy_server.images(family_run["roundtrip"]["lora_image_out"])
    assert np.array_equal(image, comfy_server.images(family_run["outputs"]["unlearned_image_out"]))
