"""The UCE and ESD-x baselines (benchmarks/uce.py, benchmarks/esd.py) on tiny tensors and tiny random models."""
import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel

from benchmarks.esd import cross_attention_names, esd_x_edit
from benchmarks.uce import uce_edit, uce_token_vectors
from razor_core.kv_map import closed_form as uce_closed_form, guide_positions
from razor_core.forget_set import ForgetSet
from razor_core.minicanvas import text
from razor_core.minicanvas.denoiser import MiniDiT
from razor_core.minicanvas.pipeline import MiniCanvasPipeline, tokenizer_dir

WIDTH = 16


@pytest.fixture(scope="module")
def tiny_pipe() -> MiniCanvasPipeline:
    """The real MiniCanvas tokenizer in front of a randomly initialised 16-wide text encoder and MiniDiT (8×8
    images). MiniDiT's default torch initialisation is used, not its DiT one, whose zeroed output conv would make
    every prediction 0."""
    torch.manual_seed(0)
    tokenizer = text.load_tokenizer(tokenizer_dir())
    encoder = CLIPTextModel(CLIPTextConfig(**{**text.text_config(tokenizer), "hidden_size": WIDTH,
                                              "intermediate_size": 2 * WIDTH, "num_hidden_layers": 1,
                                              "num_attention_heads": 2, "projection_dim": WIDTH}))
    denoiser = MiniDiT(image_size=8, patch_size=4, width=WIDTH, depth=2, heads=2, mlp_ratio=2,
                       context_dim=WIDTH, refine_channels=4)
    return MiniCanvasPipeline(tokenizer, encoder.eval(), denoiser.eval())


@pytest.fixture
def forget_set() -> ForgetSet:
    return ForgetSet("neon", "style", ("a neon style image of a star", "star, neon style"),
                     ("an image of a star", "a star"), ("", "a picture of a star in the brick style"))


def _uce_objective(new, weight, concept, guide, retain, retain_scale, regularization):
    return ((concept @ new.T - guide @ weight.T).pow(2).sum()
            + retain_scale * (retain @ new.T - retain @ weight.T).pow(2).sum()
            + regularization * (new - weight).pow(2).sum())


def test_uce_closed_form_satisfies_its_normal_equations():
    gen = torch.Generator().manual_seed(0)
    weight, concept, guide, retain = (torch.randn(*shape, generator=gen, dtype=torch.float64)
                                      for shape in ((6, 5), (3, 5), (3, 5), (4, 5)))
    new = uce_closed_form(weight, concept, guide, retain, retain_scale=0.7, regularization=0.3)

    def gradient(at: torch.Tensor) -> torch.Tensor:
        at = at.clone().requires_grad_(True)
        _uce_objective(at, weight, concept, guide, retain, 0.7, 0.3).backward()
        return at.grad

    assert gradient(weight).norm() > 1.0  # the original weight is not already optimal: the edit has work to do
    assert gradient(new).norm() < 1e-9 * gradient(weight).norm()


def test_uce_closed_form_is_the_original_weight_without_edit_vectors():
    gen = torch.Generator().manual_seed(1)
    weight, retain = torch.randn(6, 5, generator=gen), torch.randn(4, 5, generator=gen)
    none = torch.zeros(0, 5)
    torch.testing.assert_close(uce_closed_form(weight, none, none, retain), weight, rtol=0, atol=1e-6)


def test_guide_positions_align_the_end_of_the_prompts():
    # "star, neon style" (neon at 3, EOS at 5) against "a star" (EOS at 3), a context of 9: neon and style map to
    # the anchor's EOS, EOS to EOS, padding to padding, clamped at the last position.
    assert guide_positions(3, 5, 3, 9) == [3, 3, 3, 4, 5, 6]
    assert guide_positions(3, 5, 6, 9) == [6, 6, 6, 7, 8, 8]


def test_uce_vectors_are_the_concept_positions_onward(tiny_pipe, forget_set):
    concept, guide, retain = uce_token_vectors(tiny_pipe, forget_set)
    features = tiny_pipe.encode(list(forget_set.forget_prompts))
    anchors = tiny_pipe.encode(list(forget_set.anchor_prompts))
    length = text.CONTEXT_LENGTH
    # "a neon style image of a star": neon at 2, EOS at 8; "an image of a star": EOS at 6.
    first = length - 2
    torch.testing.assert_close(concept[:first], features[0, 2:])
    torch.testing.assert_close(guide[:7], anchors[0, 6].expand(7, WIDTH))
    torch.testing.assert_close(guide[7:first], anchors[0, 7:length - 2])
    assert concept.shape == guide.shape == (first + length - 3, WIDTH)  # "star, neon style": neon at 3
    assert retain.shape == (len(forget_set.retain_prompts) * length, WIDTH)


def test_uce_edit_changes_only_to_k_and_to_v_and_maps_the_concept_toward_the_guide(tiny_pipe, forget_set):
    before = {name: p.clone() for name, p in tiny_pipe.denoiser.state_dict().items()}
    deltas = uce_edit(tiny_pipe, forget_set)
    assert set(deltas) == {f"blocks.{i}.attn2.{proj}.weight" for i in range(2) for proj in ("to_k", "to_v")}
    concept, guide, _ = uce_token_vectors(tiny_pipe, forget_set)
    for name, delta in deltas.items():
        weight = before[name]
        assert delta.shape == weight.shape and torch.isfinite(delta).all() and delta.norm() > 0
        gap_before = (concept @ weight.T - guide @ weight.T).norm()
        gap_after = (concept @ (weight + delta).T - guide @ weight.T).norm()
        assert gap_after < 0.5 * gap_before
    for name, value in tiny_pipe.denoiser.state_dict().items():
        assert torch.equal(value, before[name]), f"uce_edit modified the pipeline's own {name}"


@pytest.mark.parametrize("prompts", [None, ("neon",)], ids=["forget_prompts", "concept_name"])
def test_esd_x_lowers_its_loss_and_changes_only_attn2(tiny_pipe, forget_set, prompts):
    before = {name: p.clone() for name, p in tiny_pipe.denoiser.state_dict().items()}
    deltas, stats = esd_x_edit(tiny_pipe, forget_set, iterations=40, lr=3e-3, steps=4, probe_size=4, prompts=prompts)
    assert stats["iterations"] == stats["backward_passes"] == 40
    assert stats["probe_loss_after"] < 0.8 * stats["probe_loss_before"]
    names = cross_attention_names(tiny_pipe.denoiser)
    assert set(deltas) == set(names) and all(".attn2." in name for name in names)
    assert len(names) == 2 * 8  # two blocks × (to_q, to_k, to_v, to_out) × (weight, bias)
    assert sum(float(d.norm()) for d in deltas.values()) > 0
    for name, value in tiny_pipe.denoiser.state_dict().items():
        assert torch.equal(value, before[name]), f"esd_x_edit modified the pipeline's own {name}"


def test_compare_summary_means_cells_and_ratios():
    """The benchmark's summary on hand-made runs: per-domain means of the cells, their mean, and RAZOR's ratios."""
    from benchmarks.compare import summarize

    def run(target, ua, ira, cra, seconds, peak, edit_bytes):
        return {"target": target, "ua": ua, "ira": ira, "cra": cra, "seconds": seconds, "peak_rss_mb": peak,
                "edit_bytes": edit_bytes, "backward_passes": 1}

    runs = {"razor": [run("style:a", 100, 90, 80, 10, 1100, 50), run("object:b", 80, 90, 100, 30, 1300, 150)],
            "razor_text_encoder": [run("style:a", 100, 90, 80, 8, 1100, 50), run("object:b", 80, 90, 100, 12, 1300, 150),
                                   run("object:c", 80, 90, 100, 40, 1300, 150)],
            "esd": [run("style:a", 50, 50, 50, 2000, 2000, 500), run("object:b", 50, 50, 50, 2000, 2000, 500)]}
    summary = summarize(runs, {"peak_rss_mb": 1000.0}, weights_bytes=10_000)
    assert summary["razor"]["style_ua"] == 100 and summary["razor"]["object_cra"] == 100
    assert summary["razor"]["mean_of_cells"] == pytest.approx((100 + 90 + 80 + 80 + 90 + 100) / 6)
    assert summary["ratios"]["razor_seconds / esd_seconds"] == pytest.approx(20 / 2000)
    assert summary["ratios"]["razor_peak / inference_peak"] == pytest.approx(1.2)
    assert summary["ratios"]["razor_edit_bytes / model_bytes"] == pytest.approx(100 / 10_000)
    # medians: razor (10, 30) -> 20; the text-encoder edit (8, 12, 40) -> 12
    assert summary["ratios"]["razor_median_seconds / razor_text_encoder_median_seconds"] == pytest.approx(20 / 12)
