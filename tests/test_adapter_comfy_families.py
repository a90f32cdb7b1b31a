"""The ComfyUI adapter on the DiT families whose blocks differ from SD's (Flux, Chroma, Wan, Lumina 2, Qwen-Image,
HiDream), built by ComfyUI's own model classes (`comfy.supported_models`) from small configurations with random
weights, without a server: the units each family offers, gradients through blocks that add their residuals in place
(and through HiDream's routed experts), predictions equal to the sampler's own conditioning path (guidance, an LLM
encoder's mask or hidden states included), blocks that recompute their activations for the same gradients, and head
edits that leave every other slice of a fused tensor untouched.
Checkpoints that the stock loaders detect, through a real server, are in test_comfy_checkpoints.py."""
from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

import pytest
import torch

from razor_core.adapters import comfy as comfy_adapter
from razor_core.adapters.comfy import ComfyDiffusion, TextConditioning
from razor_core.objective import computable
from razor_core.units import scatter_unit
from tests.comfy_server import COMFY_DIR, ensure_comfyui_installed
from tests.saved_tensors import saved_tensor_bytes

CONTEXT_DIM, POOLED_DIM = 24, 32
FLUX = dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=POOLED_DIM, context_in_dim=CONTEXT_DIM,
            hidden_size=64, mlp_ratio=4.0, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[8, 12, 12],
            theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True)
CHROMA = dict(image_model="chroma", in_channels=64, out_channels=64, context_in_dim=CONTEXT_DIM, hidden_size=64,
              mlp_ratio=4.0, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[8, 12, 12], theta=10000,
              patch_size=2, qkv_bias=True, in_dim=64, out_dim=64, hidden_dim=32, n_layers=1)
WAN = dict(image_model="wan2.1", model_type="t2v", dim=32, ffn_dim=64, num_heads=2, num_layers=1, text_dim=CONTEXT_DIM,
           in_dim=16, out_dim=16, freq_dim=16, patch_size=(1, 2, 2))
LUMINA2 = dict(image_model="lumina2", patch_size=2, in_channels=16, dim=32, n_layers=1, n_refiner_layers=1, n_heads=4,
               n_kv_heads=2, multiple_of=16, ffn_dim_multiplier=1.0, qk_norm=True, cap_feat_dim=CONTEXT_DIM,
               axes_dims=[4, 2, 2], axes_lens=[16, 64, 64])
QWEN_IMAGE = dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16, num_layers=2,
                  attention_head_dim=8, num_attention_heads=2, joint_attention_dim=CONTEXT_DIM, axes_dims_rope=(2, 2, 4))
LLAMA_DIM = 40  # HiDream's Llama-3.1 hidden states: one layer per block
HIDREAM = dict(image_model="hidream", patch_size=2, in_channels=16, out_channels=16, num_layers=1, num_single_layers=1,
               attention_head_dim=32, num_attention_heads=2, caption_channels=[CONTEXT_DIM, LLAMA_DIM],
               text_emb_dim=POOLED_DIM, num_routed_experts=2, num_activated_experts=1, axes_dims_rope=[8, 12, 12],
               max_resolution=[16, 16], llama_layers=[0, 1])
SWIGLU = ("w1", "w2", "w3")
DOUBLE_AND_SINGLE = ([f"double_blocks.0.{s}_attn.head{h}" for s in ("img", "txt") for h in (0, 1)]
                     + [f"double_blocks.0.{s}_mlp.{i}" for s in ("img", "txt") for i in (0, 2)]
                     + ["single_blocks.0.head0", "single_blocks.0.head1", "single_blocks.0.mlp"])


@dataclass(frozen=True)
class Family:
    model_class: str                 # in comfy.supported_models
    config: dict
    latent: tuple[int, ...]
    units: list[str]                 # every candidate, without the "diffusion_model." prefix
    extras: tuple[tuple[str, tuple[int, ...]], ...] = ()  # the text encoder's other outputs (name, shape per prompt)
    unread: tuple[str, ...] = ()     # parameters whose output the model never uses (no gradient by construction)


FAMILIES = {
    "flux": Family("Flux", FLUX, (2, 16, 8, 8), DOUBLE_AND_SINGLE),
    "chroma": Family("Chroma", CHROMA, (2, 16, 8, 8), DOUBLE_AND_SINGLE),
    "wan": Family("WAN21_T2V", WAN, (2, 16, 1, 8, 8),  # video latents; the cross-attention reads the text
                  [f"blocks.0.{a}.head{h}" for a in ("self_attn", "cross_attn") for h in (0, 1)]
                  + ["blocks.0.ffn.0", "blocks.0.ffn.2"]),
    "lumina2": Family("Lumina2", LUMINA2, (2, 16, 8, 8),  # the caption's own refiner blocks read the text first
                      [f"{b}.0.{part}" for b in ("noise_refiner", "context_refiner", "layers")
                       for part in ("attention.head0", "attention.head1", "feed_forward.w1", "feed_forward.w2",
                                    "feed_forward.w3")], extras=(("attention_mask", (5,)),)),
    "qwen_image": Family("QwenImage", QWEN_IMAGE, (2, 16, 1, 8, 8),  # image and text stream of the joint attention
                         [f"transformer_blocks.{b}.{part}" for b in (0, 1)
                          for part in ("attn.head0", "attn.head1", "attn.txt_head0", "attn.txt_head1",
                                       "img_mlp.net.0.proj", "img_mlp.net.2", "txt_mlp.net.0.proj",
                                       "txt_mlp.net.2")],
                         # the last block's text outputs are discarded: its text queries, output and MLP
                         unread=tuple(f"transformer_blocks.1.{p}" for p in ("attn.add_q_proj", "attn.to_add_out",
                                                                            "txt_mlp"))),
    "hidream": Family("HiDream", HIDREAM, (2, 16, 8, 8),  # both streams' heads, the text MLP, shared and routed experts
                      [f"double_stream_blocks.0.block.{part}" for part in
                       ("attn1.head0", "attn1.head1", "attn1.txt_head0", "attn1.txt_head1")
                       + tuple(f"{ff}.{w}" for ff in ("ff_i.shared_experts", "ff_i.experts.0", "ff_i.experts.1",
                                                      "ff_t") for w in SWIGLU)]
                      + [f"single_stream_blocks.0.block.{part}" for part in
                         ("attn1.head0", "attn1.head1") + tuple(f"{ff}.{w}" for ff in (
                             "ff_i.shared_experts", "ff_i.experts.0", "ff_i.experts.1") for w in SWIGLU)],
                      extras=(("conditioning_llama3", (2, 5, LLAMA_DIM)),)),
}


@pytest.fixture(scope="module")
def comfy():
    """ComfyUI's modules in this process, on the CPU (its device detection would look for CUDA)."""
    sys.path.insert(0, str(ensure_comfyui_installed()))
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    import comfy.model_patcher
    import comfy.sampler_helpers
    import comfy.samplers
    import comfy.supported_models
    yield comfy
    sys.path.remove(str(COMFY_DIR))


def _model(comfy, family: str, weight_dtype: torch.dtype = torch.float32):
    """`weight_dtype` other than float32: stored so, computed in float32 (ComfyUI's manual cast, as the stock
    loaders set up an fp8 `weight_dtype`)."""
    family = FAMILIES[family]
    model_config = getattr(comfy.supported_models, family.model_class)(dict(family.config))
    model_config.set_inference_dtype(weight_dtype, None if weight_dtype == torch.float32 else torch.float32)
    base = model_config.get_model({}, device="cpu")
    torch.manual_seed(0)
    with torch.no_grad():
        for p in base.diffusion_model.parameters():  # zero-initialised gates would leave most gradients zero
            p.copy_(torch.randn(p.shape) * 0.1)
    patcher = comfy.model_patcher.ModelPatcher(base, load_device="cpu", offload_device="cpu")
    base.current_patcher = patcher  # what loading it for sampling sets; calc_cond_batch asks it for its state
    return patcher


def _inputs(family: str) -> tuple[torch.Tensor, torch.Tensor, TextConditioning]:
    torch.manual_seed(1)
    x = torch.randn(FAMILIES[family].latent)
    extras = {name: torch.randn(2, *shape) if name != "attention_mask" else torch.ones(2, *shape)
              for name, shape in FAMILIES[family].extras}
    return x, torch.tensor([0.3, 0.7]), TextConditioning(torch.randn(2, 5, CONTEXT_DIM), torch.randn(2, POOLED_DIM),
                                                         extras)


@pytest.mark.parametrize("family", FAMILIES)
def test_units_cover_attention_and_mlps_of_every_block(comfy, family):
    units = {u.name: u for u in ComfyDiffusion(_model(comfy, family), None, sampler=None, blocks="denoiser").units()}
    assert sorted(units) == sorted("diffusion_model." + e for e in FAMILIES[family].units)


@pytest.mark.parametrize("family", ["flux", "chroma"])
def test_single_stream_heads_and_mlp_are_slices_of_the_fused_projections(comfy, family):
    units = {u.name: u for u in ComfyDiffusion(_model(comfy, family), None, sampler=None, blocks="denoiser").units()}
    prefix = "diffusion_model."
    head, mlp = units[prefix + "single_blocks.0.head1"], units[prefix + "single_blocks.0.mlp"]
    rows = [(s.start, s.length) for s in head.slices if s.param.endswith("linear1.weight")]
    assert rows == [(32, 32), (96, 32), (160, 32)]  # its rows of the q, k and v blocks (width 64, 2 heads)
    assert [(s.dim, s.start, s.length) for s in head.slices if s.param.endswith("linear2.weight")] == [(1, 32, 32)]
    assert [(s.dim, s.start, s.length) for s in mlp.slices if s.param.endswith(".weight")] == [(0, 192, 256),
                                                                                               (1, 64, 256)]


@pytest.mark.parametrize("family", FAMILIES)
def test_predictions_follow_the_sampler_and_every_candidate_gets_a_gradient(comfy, family):
    """Flux's and Chroma's blocks add residuals in place (`img += ...`), which autograd refuses unless the adapter
    copies the norms' inputs; guidance (Flux-dev's 3.5, Chroma's 0) comes from the model's own extra_conds, as in
    sampling."""
    patcher = _model(comfy, family)
    adapter = ComfyDiffusion(patcher, None, sampler=None, blocks="denoiser")
    units = adapter.units()
    theta = {k: v.detach().requires_grad_(True) for k, v in adapter.base_params(units).items()}
    x, t, conditioning = _inputs(family)
    prediction = adapter.predict(theta, x, t, conditioning)
    prediction.square().mean().backward()
    for name, value in theta.items():
        has_gradient = value.grad is not None and bool(value.grad.abs().sum() > 0)
        assert has_gradient != name.removeprefix("diffusion_model.").startswith(FAMILIES[family].unread), name

    base = patcher.model
    sigma = adapter.sigmas(t)
    for i in range(2):  # the sampler's path for one prompt: convert_cond, encode_model_conds, calc_cond_batch
        extras = {k: v[i:i + 1] for k, v in conditioning.extras.items()}
        conds = comfy.sampler_helpers.convert_cond([[conditioning.context[i:i + 1],
                                                     {"pooled_output": conditioning.pooled[i:i + 1], **extras}]])
        conds = comfy.samplers.encode_model_conds(base.extra_conds, conds, x[i:i + 1], "cpu", "positive")
        with torch.no_grad():
            expected = comfy.samplers.calc_cond_batch(base, [conds], x[i:i + 1], sigma[i:i + 1], {})[0]
        torch.testing.assert_close(prediction[i:i + 1].detach(), expected, rtol=1e-5, atol=1e-5)


def test_grouped_query_heads_take_their_key_value_group(comfy):
    """NextDiT's qkv rows: 4 query heads, 2 key heads, 2 value heads of 8; unit head1 is the second group."""
    units = {u.name: u for u in ComfyDiffusion(_model(comfy, "lumina2"), None, sampler=None, blocks="denoiser").units()}
    head = units["diffusion_model.layers.0.attention.head1"]
    assert [(s.param.rsplit(".", 2)[-2], s.dim, s.start, s.length) for s in head.slices] == [
        ("qkv", 0, 16, 16), ("qkv", 0, 40, 8), ("qkv", 0, 56, 8), ("out", 1, 16, 16)]


def _saved_activation_bytes(adapter: ComfyDiffusion, theta: dict, family: str) -> tuple[int, dict]:
    """Bytes autograd keeps for the backward pass of one prediction (beyond the weights), and the gradients."""
    x, t, conditioning = _inputs(family)
    with saved_tensor_bytes(list(adapter.parameters()) + list(theta.values())) as kept:
        prediction = adapter.predict(theta, x, t, conditioning)
    prediction.square().mean().backward()
    gradients = {k: v.grad for k, v in theta.items()}
    for v in theta.values():
        v.grad = None
    return kept[0], gradients


@pytest.mark.parametrize("family", FAMILIES)
def test_blocks_recompute_their_activations_for_the_same_gradients(comfy, family, monkeypatch):
    """Each block keeps only its inputs and recomputes the rest in the backward pass (Flux-dev at 1024² would keep
    about 40 GB otherwise), with the gradients of keeping everything."""
    adapter = ComfyDiffusion(_model(comfy, family), None, sampler=None, blocks="denoiser")
    theta = {k: v.detach().requires_grad_(True) for k, v in adapter.base_params(adapter.units()).items()}
    checkpointed, gradients = _saved_activation_bytes(adapter, theta, family)
    monkeypatch.setattr(comfy_adapter, "checkpointed_blocks", lambda _: contextlib.nullcontext())
    kept_all, expected = _saved_activation_bytes(adapter, theta, family)
    assert checkpointed < kept_all / 2, (checkpointed, kept_all)
    for name, grad in expected.items():
        if grad is None:  # a parameter whose output the model never reads
            assert gradients[name] is None, name
        else:
            torch.testing.assert_close(gradients[name], grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("family", ["flux", "chroma"])
def test_a_head_edit_changes_only_its_slices_of_the_fused_tensors(comfy, family):
    adapter = ComfyDiffusion(_model(comfy, family), None, sampler=None, blocks="denoiser")
    head = next(u for u in adapter.units() if u.name.endswith("single_blocks.0.head0"))
    theta = adapter.base_params([head])
    size = sum(s.of(theta[s.param]).numel() for s in head.slices)
    delta = scatter_unit(head, torch.ones(size), theta)
    for param, change in delta.items():
        touched = torch.zeros_like(change, dtype=torch.bool)
        for s in head.slices:
            if s.param == param:
                s.of(touched).fill_(True)
        assert torch.all(change[touched] == 1) and torch.all(change[~touched] == 0), param


def test_fp8_weights_get_float32_gradients_through_the_manual_cast(comfy):
    """An fp8 checkpoint (`weight_dtype` fp8_e4m3fn) computes in a wider dtype. θ⁰ is the fp8 weights themselves (a
    float32 copy of every candidate would be 4x the model); the gradient leaves are float32 (`computable`, as
    razor_core's gradients make them), so gradients are float32, and the fp8 weights stay untouched."""
    patcher = _model(comfy, "flux", torch.float8_e4m3fn)
    weights = dict(patcher.model.diffusion_model.named_parameters())
    assert {w.dtype for w in weights.values()} == {torch.float8_e4m3fn}
    before = {k: w.clone() for k, w in weights.items()}
    adapter = ComfyDiffusion(patcher, None, sampler=None, blocks="denoiser")
    theta0 = adapter.base_params(adapter.units())
    assert all(v.dtype == torch.float8_e4m3fn and v.data_ptr() == weights[k.removeprefix("diffusion_model.")].data_ptr()
               for k, v in theta0.items())
    theta = {k: computable(v).requires_grad_(True) for k, v in theta0.items()}
    x, t, conditioning = _inputs("flux")
    adapter.predict(theta, x, t, conditioning).square().mean().backward()
    assert all(v.grad.dtype == torch.float32 and v.grad.abs().sum() > 0 for v in theta.values())
    with torch.no_grad():  # θ⁰ itself serves the forwards that need no gradient: the layers cast it
        torch.testing.assert_close(adapter.predict(theta0, x, t, conditioning),
                                   adapter.predict({k: v.detach() for k, v in theta.items()}, x, t, conditioning))
    assert all(torch.equal(weights[k].view(torch.uint8), before[k].view(torch.uint8)) for k in weights)


def test_layer_granularity_takes_whole_attention_modules_and_mlp_parts(comfy):
    flux = ComfyDiffusion(_model(comfy, "flux"), None, sampler=None, granularity="layers", blocks="denoiser")
    names = sorted(u.name.removeprefix("diffusion_model.") for u in flux.units())
    assert names == sorted(["double_blocks.0.img_attn", "double_blocks.0.txt_attn", "single_blocks.0.attention",
                            "single_blocks.0.mlp"] + [f"double_blocks.0.{s}_mlp.{i}" for s in ("img", "txt")
                                                      for i in (0, 2)])
    qwen = ComfyDiffusion(_model(comfy, "qwen_image"), None, sampler=None, granularity="layers", blocks="denoiser")
    assert {"transformer_blocks.0.attn", "transformer_blocks.0.attn.txt_heads"} <= {
        u.name.removeprefix("diffusion_model.") for u in qwen.units()}
