"""The diffusers adapter on a toy UNet2DConditionModel + CLIPTextModel (SD1.5's layout, tiny sizes), and the GPU
figure's script run at toy size on the CPU."""
from __future__ import annotations

import json

import pytest
import torch

from benchmarks import gpu_sd15
from razor_core import growth
from razor_core.adapters.diffusers import DiffusersText2Image
from razor_core.forget_set import from_text
from razor_core.gradients import compute_gradients
from razor_core.objectives.diffusion import DiffusionObjective, DiffusionSettings
from razor_core.units import unit_values


@pytest.fixture(scope="module")
def tiny() -> DiffusersText2Image:
    return gpu_sd15.build(tiny=True, device="cpu", dtype=torch.float32)


def test_units_are_the_unets_and_text_encoders_heads_and_mlps(tiny):
    names = {u.name for u in tiny.units()}
    attention = "unet.down_blocks.0.attentions.0.transformer_blocks.0"
    # transformers 5 dropped CLIPTextModel's `text_model` level; 4.x has it
    text_layers = "text_encoder.encoder.layers" if hasattr(tiny.text_encoder, "encoder") else \
        "text_encoder.text_model.encoder.layers"
    for h in range(4):  # attention_head_dim=4 heads in the toy config: self-attention heads, cross-attention k/v heads
        assert f"{attention}.attn1.head{h}" in names and f"{attention}.attn2.kv{h}" in names
        assert f"{attention}.attn2.head{h}" not in names
        assert f"{text_layers}.1.self_attn.head{h}" in names
    assert {f"{attention}.ff.net.0.proj", f"{attention}.ff.net.2", f"{text_layers}.0.mlp.fc1"} <= names
    kinds = {u.kind for u in tiny.units()}
    assert kinds == {"head", "kv_head", "mlp"}


def test_razor_on_the_toy_model_forgets_within_tolerance_and_edits_only_its_units(tiny):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    forget_set = from_text("Van Gogh", "style", gpu_sd15.FORGET_PROMPTS, "generic", gpu_sd15.RETAIN_PROMPTS)
    objective = DiffusionObjective(tiny, forget_set, DiffusionSettings(seed=0))
    config = growth.RazorConfig(max_rounds=2)
    result = growth.run(objective, config)
    last = result.rounds[-1]
    assert last.forget_progress > 0.2 and last.retain_drift <= config.drift_tolerance
    theta0 = objective.base_params()
    touched = {}
    for unit in result.units:  # zero every edited slice: what is left must be exactly zero
        for s in unit.slices:
            touched.setdefault(s.param, torch.zeros_like(theta0[s.param]))
            s.of(touched[s.param]).fill_(1.0)
    assert set(result.delta) <= set(touched)
    for name, delta in result.delta.items():
        assert delta.abs().sum() > 0 and (delta * (1 - touched[name])).abs().max() == 0
    assert all(torch.equal(v, before[k]) for k, v in tiny.state_dict().items()), "the model was modified"


def test_half_precision_weights_are_not_copied_and_get_the_float32_path_s_gradients():
    model = gpu_sd15.build(tiny=True, device="cpu", dtype=torch.float16)
    forget_set = from_text("Van Gogh", "style", gpu_sd15.FORGET_PROMPTS, "generic", gpu_sd15.RETAIN_PROMPTS)
    objective = DiffusionObjective(model, forget_set)
    assert objective.gradient_scale > 1  # fp16 backward passes are loss-scaled
    theta0 = objective.base_params()
    weights = dict(model.named_parameters())
    assert all(v.dtype == torch.float16 and v.data_ptr() == weights[k].data_ptr() for k, v in theta0.items())
    native = compute_gradients(objective, theta0)
    # float32 copies of θ⁰ (cast back to fp16 inside the forward) must give the very same gradients
    widened = compute_gradients(objective, {k: v.float() for k, v in theta0.items()})
    for name in theta0:
        assert native.forget[name].dtype == native.retain[name].dtype == torch.float32
        assert torch.equal(native.forget[name], widened.forget[name])
        assert torch.equal(native.retain[name], widened.retain[name])
    assert all(torch.isfinite(g).all() for g in native.forget.values())
    unit = next(u for u in model.units() if u.name.endswith("attn2.kv0"))
    assert unit_values(unit, native.forget).abs().sum() > 0
    assert next(model.unet.parameters()).dtype == torch.float16


def test_epsilon_target_and_noising_follow_the_scheduler(tiny):
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([0.0, 0.5, 1.0])
    alphas = tiny.scheduler.alphas_cumprod[[0, 500, 999]].float()[:, None, None, None]
    assert torch.allclose(tiny.noisy(x0, noise, t), alphas.sqrt() * x0 + (1 - alphas).sqrt() * noise)
    assert torch.equal(tiny.denoise_target(x0, noise, t), noise)


def test_gpu_figure_script_runs_at_toy_size_in_float16(tmp_path):
    """The GPU run's code path (fp16 weights, so loss scaling on) at toy size on the CPU."""
    out = tmp_path / "gpu.json"
    row = gpu_sd15.main(["--tiny", "--device", "cpu", "--dtype", "float16", "--json", str(out)])
    assert json.loads(out.read_text()) == row
    assert row["seconds"] > row["self_generation_seconds"] > 0 and row["rounds"] >= 1 and row["units"]
    assert row["forget_progress"] > 0.2 and row["retain_drift"] <= growth.RazorConfig().drift_tolerance
    assert row["peak_gb"] > 0 and row["paper"] == gpu_sd15.PAPER and row["dtype"] == "float16"


def test_unknown_prediction_type_is_refused(tiny):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(**gpu_sd15.SD15_SCHEDULER, prediction_type="flow")
    with pytest.raises(ValueError, match="prediction_type 'flow'"):
        DiffusersText2Image(tiny.unet, tiny.text_encoder, tiny.tokenizer, scheduler)


def _out_of_memory_above(limit: int, predict, when=lambda: True):
    """`predict`, except that a batch of more than `limit` samples runs out of memory (as CUDA would) while
    `when()`."""
    def limited(params, x, *args):
        if when() and len(x) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return predict(params, x, *args)
    return limited


def test_batches_halve_until_they_fit_in_memory_and_give_the_same_results(monkeypatch):
    forget_set = from_text("Van Gogh", "style", gpu_sd15.FORGET_PROMPTS, "generic", gpu_sd15.RETAIN_PROMPTS)
    settings = DiffusionSettings(micro_batch=8, validation_batch=64)
    reference_model, tight_model = (gpu_sd15.build(tiny=True, device="cpu", dtype=torch.float32) for _ in "ab")
    reference_model.sample_batch = 1
    reference = DiffusionObjective(reference_model, forget_set, settings)
    draw = tight_model._sample

    def draw_one_at_a_time(prompts, seeds):
        if tight_model.sample_batch > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return draw(prompts, seeds)
    monkeypatch.setattr(tight_model, "_sample", draw_one_at_a_time)
    tight = DiffusionObjective(tight_model, forget_set, settings)  # draws its images one at a time
    assert tight_model.sample_batch == 1
    monkeypatch.setattr(tight_model, "predict", _out_of_memory_above(2, tight_model.predict, torch.is_grad_enabled))
    theta0 = tight.base_params()
    grads = compute_gradients(tight, theta0)
    reference.micro_batch = 2
    expected = compute_gradients(reference, reference.base_params())
    assert tight.micro_batch == 2 and grads.backward_passes == expected.backward_passes
    assert all(torch.equal(grads.forget[k], expected.forget[k]) and torch.equal(grads.retain[k], expected.retain[k])
               for k in theta0)
    monkeypatch.setattr(tight_model, "predict", _out_of_memory_above(5, tight_model.predict))
    with torch.no_grad():  # as the step-size search probes
        validation = tight.validate(theta0)
        reference.validation_batch = 4
        assert tight.validation_batch == 4 and validation == reference.validate(reference.base_params())


def test_a_batch_of_one_that_does_not_fit_says_what_to_do(tiny, monkeypatch):
    forget_set = from_text("Van Gogh", "style", gpu_sd15.FORGET_PROMPTS, "generic", gpu_sd15.RETAIN_PROMPTS)
    monkeypatch.setattr(tiny, "predict", _out_of_memory_above(0, tiny.predict))
    with pytest.raises(torch.OutOfMemoryError, match="even one sample at a time: score fewer blocks"):
        DiffusionObjective(tiny, forget_set)


@pytest.mark.parametrize("name", ["micro_batch", "validation_batch", "timesteps_per_image"])
def test_batch_sizes_below_one_are_refused(name):
    with pytest.raises(ValueError, match=f"{name} must be at least 1, got 0"):
        DiffusionSettings(**{name: 0})
