"""The ComfyUI adapter on weights made the way ComfyUI makes them (inside `torch.inference_mode()`), without a
server: a MiniDiT behind a duck-typed BaseModel. The workflows through a real server are in test_comfy_*.py."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from razor_core.adapters.comfy import ComfyDiffusion, TextConditioning, UnsupportedModelError
from razor_core.gradients import ordinary_alias
from razor_core.minicanvas.denoiser import MiniDiT

CONFIG = {"image_size": 8, "patch_size": 4, "width": 32, "depth": 2, "heads": 2, "context_dim": 16,
          "refine_channels": 4}


class FakeCond:
    """ComfyUI's CONDRegular as the adapter uses it: `process_cond`, `can_concat` and `concat`."""

    def __init__(self, cond: torch.Tensor):
        self.cond = cond

    def process_cond(self, batch_size: int, area: None) -> "FakeCond":
        assert self.cond.shape[0] == batch_size and area is None
        return self

    def can_concat(self, other: "FakeCond") -> bool:
        return self.cond.shape == other.cond.shape

    def concat(self, others: list["FakeCond"]) -> torch.Tensor:
        return torch.cat([self.cond] + [o.cond for o in others])


class FakeBase:
    """The parts of ComfyUI's BaseModel the adapter calls: extra_conds (the context as `c_crossattn`), apply_model
    on (x, σ, context), σ = 1 − percent."""
    manual_cast_dtype = None

    def __init__(self, denoiser: MiniDiT):
        self.diffusion_model = denoiser
        self.model_sampling = SimpleNamespace(percent_to_sigma=lambda percent: 1.0 - percent)

    def get_dtype(self) -> torch.dtype:
        return torch.float32

    def extra_conds(self, cross_attn: torch.Tensor, **_) -> dict[str, FakeCond]:
        return {"c_crossattn": FakeCond(cross_attn)}

    def apply_model(self, x: torch.Tensor, sigma: torch.Tensor, c_crossattn: torch.Tensor) -> torch.Tensor:
        return self.diffusion_model(x, sigma * 1000, c_crossattn)


def _denoiser() -> MiniDiT:
    torch.manual_seed(0)
    denoiser = MiniDiT(**CONFIG)
    for p in denoiser.parameters():  # DiT's zero-initialised gates would leave most gradients zero
        torch.nn.init.normal_(p, std=0.2)
    return denoiser


def _gradients(adapter: ComfyDiffusion, theta: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    x, context = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 16)
    leaves = {k: v.detach().requires_grad_(True) for k, v in theta.items()}
    prediction = adapter.predict(leaves, x, torch.tensor([0.3, 0.7]), TextConditioning(context, None))
    prediction.square().mean().backward()
    return {k: v.grad for k, v in leaves.items()}


def test_inference_weights_get_gradients_without_a_copy_and_stay_untouched():
    """ComfyUI's weights are inference tensors, which autograd refuses to save; the adapter differentiates through
    aliases of their memory (no second model's worth of copies) and never writes to them."""
    with torch.inference_mode():
        loaded = _denoiser()  # what a ComfyUI loader hands over: every weight an inference tensor
    assert all(p.is_inference() for p in loaded.parameters())
    original = {k: v.clone() for k, v in loaded.state_dict().items()}
    adapter = ComfyDiffusion(SimpleNamespace(model=FakeBase(loaded)), None, sampler=None, blocks="denoiser")
    units = adapter.units()
    assert {u.kind for u in units} == {"head", "kv_head", "mlp"}
    theta0 = adapter.base_params(units)
    module_params = dict(loaded.named_parameters())
    for name, value in theta0.items():
        assert not value.is_inference()
        assert value.data_ptr() == module_params[name.removeprefix("diffusion_model.")].data_ptr(), name

    grads = _gradients(adapter, theta0)
    reference = ComfyDiffusion(SimpleNamespace(model=FakeBase(_denoiser())), None, sampler=None, blocks="denoiser")
    expected = _gradients(reference, reference.base_params(units))
    assert grads.keys() == expected.keys() and any(g.abs().sum() > 0 for g in grads.values())
    for name in grads:
        assert torch.equal(grads[name], expected[name]), name
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, original[name]), name


class QuantisedWeight(torch.Tensor):
    """Stands for a tensor subclass that decodes itself (e.g. GGUF-quantised weights)."""


def test_an_alias_is_a_view_of_the_same_memory_and_a_subclass_keeps_its_type():
    with torch.inference_mode():
        plain = torch.randn(3, 4)
        quantised = torch.randn(3, 4).as_subclass(QuantisedWeight)
    column_view = plain[:, 1:]  # storage offset and strides must carry over
    alias = ordinary_alias(column_view)
    assert not alias.is_inference() and alias.data_ptr() == column_view.data_ptr()
    assert alias.stride() == column_view.stride() and torch.equal(alias, column_view)
    copy = ordinary_alias(quantised)  # an alias would be a plain tensor over the encoded bytes
    assert type(copy) is QuantisedWeight and not copy.is_inference() and torch.equal(copy, quantised)


def test_text_conditioning_batches_the_encoders_extra_outputs_and_refuses_unequal_lengths():
    """An LLM encoder's attention mask travels with its prompt through `cat` and indexing, as the context does."""
    first = TextConditioning(torch.zeros(1, 4, 8), torch.zeros(1, 8), {"attention_mask": torch.ones(1, 4)})
    second = TextConditioning(torch.ones(1, 4, 8), torch.ones(1, 8), {"attention_mask": torch.zeros(1, 4)})
    both = TextConditioning.cat([first, second])
    assert both.context.shape == (2, 4, 8) and both.pooled.shape == (2, 8)
    picked = both[torch.tensor([1])]
    assert torch.equal(picked.context, second.context) and torch.equal(picked.extras["attention_mask"],
                                                                       second.extras["attention_mask"])
    longer = TextConditioning(torch.zeros(1, 6, 8), torch.zeros(1, 8), {"attention_mask": torch.ones(1, 6)})
    with pytest.raises(ValueError, match=r"different lengths \(\[4, 6\] tokens\)"):
        TextConditioning.cat([first, longer])


def test_a_model_with_nothing_to_edit_is_refused_when_the_adapter_is_made():
    """Fail fast: the node makes the adapter before it generates any image."""
    base = FakeBase(_denoiser())
    base.diffusion_model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(UnsupportedModelError, match="no units to edit in this Sequential with blocks='denoiser'"):
        ComfyDiffusion(SimpleNamespace(model=base), None, sampler=None, blocks="denoiser")


def test_quantised_weights_that_decode_themselves_are_refused_before_anything_runs():
    """GGUF's weights are a tensor subclass holding codes: no gradient to follow, no weight to add a difference to."""
    base = FakeBase(_denoiser())
    to_k = base.diffusion_model.blocks[0].attn2.to_k
    to_k.weight = torch.nn.Parameter(to_k.weight.detach().as_subclass(QuantisedWeight), requires_grad=False)
    with pytest.raises(UnsupportedModelError, match="stored as QuantisedWeight .*load the model unquantised"):
        ComfyDiffusion(SimpleNamespace(model=base), None, sampler=None, blocks="denoiser")
