"""benchmarks/robustness.py: the weight casts on tiny tensors, and the soft-prompt attack's plumbing on the bundled
MiniCanvas model (loaded once)."""
import numpy as np
import pytest
import torch

from benchmarks.robustness import (CAST_FORMATS, FLOAT_FORMATS, attack_loss, attack_step, cast_parameters_,
                                   cast_roundtrip, dequantize_int8, initial_prefix, markdown, merge, prefix_context,
                                   quantize_int8_per_channel, sample_contexts, summarize, target_cells)
from razor_core.minicanvas import data
from razor_core.minicanvas.classifier import to_model_input
from razor_core.minicanvas.pipeline import MiniCanvasPipeline, load_pipeline

PROMPT = "a star in neon style"


@pytest.fixture(scope="module")
def pipe() -> MiniCanvasPipeline:
    return load_pipeline()


# ---------------------------------------------------------------------------------------------- casts
def test_int8_error_is_at_most_half_a_step_of_each_channel():
    torch.manual_seed(0)
    # Rows a thousand times apart: a per-tensor scale would give the small rows steps far coarser than their own.
    weight = torch.randn(6, 3, 2, 2) * torch.tensor([1e-3, 1.0, 5.0, 1e-2, 0.3, 2.0])[:, None, None, None]
    q, scale = quantize_int8_per_channel(weight)
    assert q.dtype == torch.int8 and q.shape == weight.shape and scale.shape == (6, 1, 1, 1)
    torch.testing.assert_close(scale.flatten(), weight.abs().flatten(1).amax(1) / 127)
    error = (dequantize_int8(q, scale) - weight).abs()
    assert (error <= scale / 2 * (1 + 1e-6)).all()
    assert q.abs().flatten(1).amax(1).eq(127).all()  # each channel's largest magnitude uses the full range


def test_int8_is_exact_on_the_grid_and_keeps_zero_rows():
    scale = torch.tensor([[0.01], [0.5], [3.0]])
    ints = torch.randint(-126, 127, (3, 9), generator=torch.Generator().manual_seed(1)).float()
    ints[:, 0] = 127  # the row maximum fixes the scale, so every value lies on the grid
    weight = ints * scale
    torch.testing.assert_close(dequantize_int8(*quantize_int8_per_channel(weight)), weight, rtol=0, atol=0)
    zeros = torch.zeros(2, 4)
    assert torch.equal(cast_roundtrip(zeros, "int8"), zeros)


def test_int8_is_weight_only():
    bias = torch.randn(7)
    assert torch.equal(cast_roundtrip(bias, "int8"), bias)


@pytest.mark.parametrize("fmt", list(FLOAT_FORMATS))
def test_float_cast_keeps_representable_values_and_rounds_others_within_precision(fmt):
    dtype = FLOAT_FORMATS[fmt]
    gen = torch.Generator().manual_seed(2)
    representable = (torch.randn(2000, generator=gen) * 4).to(dtype).float()
    assert torch.equal(cast_roundtrip(representable, fmt), representable)
    # Normal range of every format here (e4m3fn: 2^-6 .. 448), random signs and magnitudes.
    values = torch.exp(torch.empty(4000).uniform_(np.log(0.02), np.log(400.0), generator=gen))
    values = values * torch.where(torch.rand(4000, generator=gen) < 0.5, -1.0, 1.0)
    out = cast_roundtrip(values, fmt)
    assert out.dtype == torch.float32
    assert ((out - values).abs() <= values.abs() * torch.finfo(dtype).eps / 2).all()
    assert not torch.equal(out, values)  # float32 values are not all representable: the cast did round


@pytest.mark.parametrize("fmt", list(FLOAT_FORMATS))
def test_float_cast_saturates_instead_of_overflowing(fmt):
    beyond = torch.finfo(torch.float32).max  # above every format's largest value, bf16's included
    out = cast_roundtrip(torch.tensor([beyond, -beyond]), fmt)
    largest = torch.finfo(FLOAT_FORMATS[fmt]).max
    assert out.tolist() == [largest, -largest]


def test_cast_parameters_rounds_every_floating_parameter():
    torch.manual_seed(3)
    module = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.LayerNorm(4))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    for fmt in CAST_FORMATS:
        module.load_state_dict(before)
        cast_parameters_(module, fmt)
        for name, value in module.state_dict().items():
            assert torch.equal(value, cast_roundtrip(before[name], fmt)), (fmt, name)
    assert not torch.equal(module[0].weight, before["0.weight"])


# ---------------------------------------------------------------------------------------------- attack plumbing
def test_empty_prefix_reproduces_encode(pipe):
    prompts = [PROMPT, "a painting of a heart with grass style"]
    empty = torch.zeros(2, 0, 128)
    assert torch.equal(prefix_context(pipe, prompts, empty), pipe.encode(prompts))


def test_prefix_of_real_token_embeddings_is_the_prompt_with_those_words_inserted(pipe):
    words = "big crescent"
    ids = pipe.tokenizer(words, add_special_tokens=False).input_ids
    prefix = pipe.text_encoder.get_input_embeddings()(torch.tensor([ids]))
    with torch.no_grad():
        attacked = prefix_context(pipe, [PROMPT], prefix)
    torch.testing.assert_close(attacked, pipe.encode([f"{words} {PROMPT}"]))


def test_prefix_initialised_from_the_prompt_words(pipe):
    embeddings = pipe.text_encoder.get_input_embeddings()
    expected = embeddings(torch.tensor([pipe.tokenizer("a star in neon", add_special_tokens=False).input_ids]))
    assert torch.equal(initial_prefix(pipe, [PROMPT], 4), expected)
    short = embeddings(torch.tensor([pipe.tokenizer("a a a", add_special_tokens=False).input_ids]))
    assert torch.equal(initial_prefix(pipe, ["a"], 3), short)  # fewer words than tokens: cycled


def test_prefix_that_does_not_fit_is_refused(pipe):
    with pytest.raises(ValueError, match="prefix tokens"):
        prefix_context(pipe, [PROMPT], torch.zeros(1, 20, 128))


def test_one_attack_step_decreases_the_attack_loss(pipe):
    prompts = [PROMPT]
    target = to_model_input(torch.from_numpy(data.render(5, 3, 0)[None]))  # a neon star
    gen = torch.Generator().manual_seed(0)
    t = torch.tensor([[0.3, 0.6, 0.8]])
    noise = torch.randn(1, 3, *target.shape[1:], generator=gen)
    prefix = initial_prefix(pipe, prompts).requires_grad_(True)
    optimizer = torch.optim.Adam([prefix], lr=1e-4)
    before = attack_step(pipe, prompts, prefix, target, optimizer, t, noise)
    with torch.no_grad():
        after = float(attack_loss(pipe, prompts, prefix, target, t, noise))
    assert after < before


def test_sample_contexts_matches_pipeline_sample(pipe):
    prompts, seeds = [PROMPT, "a heart in grass style"], [7, 8]
    torch.testing.assert_close(sample_contexts(pipe, pipe.encode(prompts), seeds, steps=2),
                               pipe.sample(prompts, seeds, steps=2))


# ---------------------------------------------------------------------------------------------- bookkeeping
def test_target_cells_are_the_grid_cells_naming_the_concept():
    prompts, seeds, other = target_cells("object", 3, (188, 288))
    assert len(prompts) == 2 * len(data.STYLES) and all("star" in p for p in prompts)
    assert len(set(seeds)) == len(seeds) and sorted(set(other.tolist())) == list(range(len(data.STYLES)))


def _fake_run(method: str, ua: float, attack: float, drop: float) -> dict:
    templates = {t: 97.0 for t in data.PARAPHRASE_TEMPLATES}
    return {"method": method, "target": "style:neon", "ua": ua, "ua_model_only": ua, "paraphrase_ua": 97.0,
            "paraphrase_ua_per_template": templates, "paraphrase_acc_before": 100.0, "attack_success_before": 100.0,
            "no_attack_success": 100.0 - ua, "attack_success": attack,
            "cast_ua": {f: ua - drop for f in CAST_FORMATS}, "cast_ua_drop": {f: drop for f in CAST_FORMATS},
            "cast_other_acc": {f: 100.0 for f in CAST_FORMATS}}


def test_summary_checks_razor_bars():
    runs = {"razor": [_fake_run("razor", 100.0, 50.0, 0.0), _fake_run("razor", 100.0, 10.0, 2.0)],
            "uce": [_fake_run("uce", 60.0, 90.0, 0.0)]}
    summary = summarize(runs)
    assert summary["razor"]["attack_success"] == 30.0 and summary["razor"]["cast_ua_drop"]["int8"] == 1.0
    bars = summary["razor_acceptance"]
    assert bars["paraphrase_ua >= 97"] == [97.0, True]
    assert bars["attack_success <= 20"] == [30.0, False]
    assert bars["cast_ua_drop[fp16] <= 1"] == [1.0, True]
    table = markdown({"summary": summary, "targets": ["style:neon"], "eval_seeds": [188],
                      "attack": {"prefix_tokens": 4, "steps": 40, "lr": 1e-3, "draws_per_step": 2}})
    assert "| razor | 100.0 | 100.0 | 97.0 | 100.0 | 100.0 | 0.0 | 30.0 | 1.0 | 1.0 | 1.0 | 1.0 |" in table
    assert "attack_success <= 20: 30.0 (NOT met)" in table


def _batch(targets: list[str], **settings) -> dict:
    runs = {"razor": [{**_fake_run("razor", 100.0, 10.0 * i, 0.0), "target": t} for i, t in enumerate(targets)]}
    return {"machine": "2 threads", "eval_seeds": [188], "attack": {"steps": 40}, "blocks": "denoiser",
            "cast_grid": False, "targets": targets, "seconds": 5.0, "runs": runs, **settings}


def test_batches_of_targets_merge_into_one_result():
    merged = merge([_batch(["style:neon", "style:brick"]), _batch(["object:star"])])
    assert merged["targets"] == ["style:neon", "style:brick", "object:star"] and merged["seconds"] == 10.0
    assert [r["target"] for r in merged["runs"]["razor"]] == merged["targets"]
    assert merged["summary"]["razor"]["attack_success"] == pytest.approx(10.0 / 3)  # (0 + 10 + 0) / 3
    with pytest.raises(ValueError, match="other settings"):
        merge([_batch(["style:neon"]), _batch(["object:star"], attack={"steps": 200})])
    with pytest.raises(ValueError, match="two batches"):
        merge([_batch(["style:neon"]), _batch(["style:neon"])])
