"""The retain-aware preconditioner: steps avoid what retain inputs use, and still raise the forget loss."""
import torch
from torch import nn

from razor_core.preconditioner import precondition, retain_input_moments
from razor_core.units import COMFY_STYLE, attention_units, linear_units, unit_values


class _Attention(nn.Module):
    def __init__(self, width: int = 8, heads: int = 2):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(width, width) for _ in range(3))
        self.to_out = nn.Sequential(nn.Linear(width, width))

    def forward(self, x):  # enough to reach every projection; the attention itself does not matter here
        return self.to_out(self.to_q(x) * self.to_k(x) + self.to_v(x))


def _retain_and_forget_inputs(width: int = 8):
    gen = torch.Generator().manual_seed(0)
    retain = torch.randn(256, width, generator=gen)
    retain[:, -2:] = 0.0  # retain inputs never use the last two features; the concept does
    forget = torch.randn(16, width, generator=gen)
    forget[:, -2:] += 3.0
    return retain, forget


def test_preconditioned_step_spares_retain_outputs_and_still_ascends():
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(8, 4))
    unit = linear_units(layer, ["0"])[0]
    retain, forget = _retain_and_forget_inputs()
    moments = retain_input_moments(layer, [unit], lambda: layer(retain))
    params = dict(layer.named_parameters())
    # The gradient of "move the forget outputs along v": a rank-one [v·xᵀ, v] direction per forget input.
    v = torch.randn(4)
    raw = torch.cat([(v[:, None] * forget.mean(0)[None]).reshape(-1), v])
    shaped = precondition(unit, raw, {k: p.shape for k, p in params.items()}, moments, damping=1e-3)
    assert float(raw @ shaped) > 0  # still an ascent direction

    def output_change(direction, x):
        w, b = direction[:32].view(4, 8), direction[32:]
        return (x @ w.t() + b) / direction.norm()

    raw_retain = output_change(raw, retain).norm() / output_change(raw, forget).norm()
    shaped_retain = output_change(shaped, retain).norm() / output_change(shaped, forget).norm()
    assert shaped_retain < 0.2 * raw_retain


def test_head_slices_use_their_own_input_block():
    torch.manual_seed(0)
    attn = _Attention()
    head = attention_units(attn, COMFY_STYLE)[1]
    retain, _ = _retain_and_forget_inputs()
    moments = retain_input_moments(attn, [head], lambda: attn(retain))
    assert set(moments) == {"to_q", "to_k", "to_v", "to_out.0"}
    assert moments["to_q"].moment().shape == (9, 9) and moments["to_out.0"].moment().shape == (9, 9)
    params = {k: p.detach() for k, p in attn.named_parameters()}
    shapes = {k: p.shape for k, p in params.items()}
    direction = torch.randn(unit_values(head, params).numel())
    shaped = precondition(head, direction, shapes, moments, damping=0.1)
    assert shaped.shape == direction.shape
    # The output-projection columns of head 1 (features 4..7) are shaped by that block of Σ alone.
    out_block = moments["to_out.0"].moment(4, 4)
    ridge = 0.1 * torch.diagonal(out_block).mean()
    expected = direction[-32:].view(8, 4).double() @ torch.linalg.inv(out_block + ridge * torch.eye(4, dtype=torch.double))
    torch.testing.assert_close(shaped[-32:].view(8, 4), expected.float())


def test_a_layer_seen_on_fewer_inputs_than_features_keeps_them_and_solves_exactly():
    """A wide layer read on few retain tokens keeps the n x d inputs, not the d x d moment, and its solve through
    the n x n side equals the direct inverse; past d inputs it keeps the moment."""
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(48, 6))
    unit = linear_units(layer, ["0"])[0]
    few = retain_input_moments(layer, [unit], lambda: (layer(torch.randn(10, 48)), layer(torch.randn(10, 48))))
    assert few["0"].total is None and sum(len(c) for c in few["0"].chunks) == 20
    params = {k: p.detach() for k, p in layer.named_parameters()}
    direction = torch.randn(unit_values(unit, params).numel(), dtype=torch.float64)
    shaped = precondition(unit, direction, {k: p.shape for k, p in params.items()}, few, damping=0.01)
    moment = few["0"].moment()
    ridge = 0.01 * torch.diagonal(moment).mean()
    joint = torch.cat([direction[:288].view(6, 48), direction[288:].view(6, 1)], dim=1)
    expected = joint @ torch.linalg.inv(moment + ridge * torch.eye(49, dtype=torch.float64))
    torch.testing.assert_close(shaped, torch.cat([expected[:, :48].reshape(-1), expected[:, 48]]))
    many = retain_input_moments(layer, [unit], lambda: layer(torch.randn(64, 48)))
    assert many["0"].total is not None and many["0"].total.shape == (49, 49) and not many["0"].chunks
