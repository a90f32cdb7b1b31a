"""Edit units, head slices and the RazorEdit file on small random models (no trained weights needed)."""
import pytest
import torch
from torch import nn

from razor_core.edit import EditFileError, RazorEdit, fingerprint, selector_factors
from razor_core.minicanvas.denoiser import MiniDiT
from razor_core.adapters.base import tower_units
from razor_core.units import (COMFY_STYLE, AttentionSpec, EditUnit, attention_units, scatter_unit, unit_values)


@pytest.fixture(scope="module")
def dit():
    torch.manual_seed(0)
    model = MiniDiT(width=32, depth=2, heads=4, context_dim=16, refine_channels=8)
    model.initialize_weights(torch.Generator().manual_seed(0))
    for p in model.parameters():  # zero-initialised gates would hide edits; give every weight a value
        p.data.normal_(0, 0.1, generator=torch.Generator().manual_seed(p.numel()))
    return model.requires_grad_(False)


def test_every_attention_module_yields_one_unit_per_head(dit):
    units = attention_units(dit, COMFY_STYLE, heads=True)
    assert len(units) == 2 * 2 * 4  # depth x (attn1, attn2) x heads
    layers = attention_units(dit, COMFY_STYLE, heads=False)
    assert [u.name for u in layers] == ["blocks.0.attn1", "blocks.0.attn2", "blocks.1.attn1", "blocks.1.attn2"]


def test_a_denoisers_cross_attention_gives_key_value_units_instead_of_heads(dit):
    units = tower_units(dit, COMFY_STYLE, "", True, ("ff.0", "ff.2"), keys_values=True)
    kv = [u for u in units if u.kind == "kv_head"]
    assert [u.name for u in kv] == [f"blocks.{b}.attn2.kv{h}" for b in range(2) for h in range(4)]
    assert not any(u.kind == "head" and ".attn2." in u.name for u in units)  # self-attention heads stay heads
    assert sum(u.kind == "head" for u in units) == 2 * 4 and sum(u.kind == "mlp" for u in units) == 2 * 2
    unit = next(u for u in kv if u.name == "blocks.1.attn2.kv2")
    assert {(s.param, s.dim, s.start, s.length) for s in unit.slices} == {
        (f"blocks.1.attn2.{p}.{t}", 0, 16, 8) for p in ("to_k", "to_v") for t in ("weight", "bias")}
    layers = tower_units(dit, COMFY_STYLE, "", False, (), keys_values=True)
    whole = next(u for u in layers if u.name == "blocks.0.attn2.kv")
    assert whole.kind == "kv" and {s.param for s in whole.slices} == {
        f"blocks.0.attn2.{p}.{t}" for p in ("to_k", "to_v") for t in ("weight", "bias")}


def test_head_unit_slices_rows_of_qkv_and_columns_of_out(dit):
    unit = next(u for u in attention_units(dit, COMFY_STYLE) if u.name == "blocks.1.attn2.head2")
    by_param = {s.param: s for s in unit.slices}
    assert by_param["blocks.1.attn2.to_k.weight"].dim == 0 and by_param["blocks.1.attn2.to_k.weight"].start == 16
    assert by_param["blocks.1.attn2.to_out.weight"].dim == 1 and by_param["blocks.1.attn2.to_out.weight"].length == 8
    assert "blocks.1.attn2.to_out.bias" not in by_param  # shared by all heads


def test_a_head_edit_leaves_every_other_head_bit_identical(dit):
    params = {k: v.clone() for k, v in dit.named_parameters()}
    units = attention_units(dit, COMFY_STYLE)
    target = next(u for u in units if u.name == "blocks.0.attn1.head1")
    delta = scatter_unit(target, torch.randn(unit_values(target, params).numel()), params)
    edited = {k: v + delta[k] if k in delta else v for k, v in params.items()}
    for unit in units:
        same = torch.equal(unit_values(unit, edited), unit_values(unit, params))
        assert same != (unit.name == target.name), unit.name
    changed = {k for k in params if not torch.equal(params[k], edited[k])}
    assert changed == {f"blocks.0.attn1.{p}" for p in ("to_q.weight", "to_q.bias", "to_k.weight", "to_k.bias",
                                                       "to_v.weight", "to_v.bias", "to_out.weight")}


class FusedAttention(nn.Module):
    def __init__(self, dim=12, heads=3):
        super().__init__()
        self.num_heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)


def test_fused_qkv_head_takes_the_three_row_blocks():
    spec = AttentionSpec("qkv", "", "", "proj", "num_heads", fused_qkv=True)
    units = attention_units(FusedAttention(), spec)
    assert len(units) == 3
    starts = sorted(s.start for s in units[1].slices if s.param == "qkv.weight")
    assert starts == [4, 16, 28]  # head 1 of Q, K and V (d=12, d_h=4)


def _tiny_edit(dit):
    params = dict(dit.named_parameters())
    unit = next(u for u in attention_units(dit, COMFY_STYLE) if u.name == "blocks.1.attn2.head0")
    delta = scatter_unit(unit, torch.randn(unit_values(unit, params).numel(),
                                           generator=torch.Generator().manual_seed(1)) * 0.05, params)
    base = {k: params[k] for k in delta}
    return RazorEdit(delta, [unit], "style:neon", {"method": "razor"}, fingerprint(base),
                     scores=[{"unit": unit.name, "score": 1.0}], rounds=[{"round": 0}])


def _forward(model):
    g = torch.Generator().manual_seed(3)
    return model(torch.randn(2, 3, 32, 32, generator=g), torch.tensor([100.0, 700.0]), torch.randn(2, 5, 16, generator=g))


def test_save_load_apply_reproduces_outputs_exactly_and_revert_restores(dit, tmp_path):
    edit = _tiny_edit(dit)
    before = _forward(dit)
    originals = {k: v.clone() for k, v in dit.state_dict().items()}
    backup = edit.apply_to(dit)
    direct = _forward(dit)
    RazorEdit.revert(dit, backup)
    path = edit.save(tmp_path / "neon.safetensors")
    loaded = RazorEdit.load(path)
    assert loaded.concept == "style:neon" and [u.name for u in loaded.units] == ["blocks.1.attn2.head0"]
    assert loaded.units == edit.units
    backup = loaded.apply_to(dit)
    assert torch.equal(_forward(dit), direct)
    assert not torch.equal(direct, before)
    RazorEdit.revert(dit, backup)
    for k, v in dit.state_dict().items():
        assert torch.equal(v, originals[k]), k


def test_head_edits_are_stored_as_exact_lora_pairs_that_reload_bit_for_bit(dit, tmp_path):
    """A head changes rows of q, k, v and columns of the output projection: LoRA pairs with a one-hot selector,
    which ComfyUI's stock loaders read, instead of full-shape differences."""
    from safetensors import safe_open
    edit = _tiny_edit(dit)
    path = edit.save(tmp_path / "e.safetensors", key_map=lambda k: "diffusion_model." + k)
    with safe_open(str(path), "pt") as fh:
        keys = set(fh.keys())
        meta = fh.metadata()
        stored = sum(fh.get_tensor(k).numel() for k in keys)
    stem = "diffusion_model.blocks.1.attn2"
    assert {f"{stem}.{p}.lora_{s}.weight" for p in ("to_q", "to_k", "to_v", "to_out") for s in ("up", "down")} \
        <= keys
    assert f"{stem}.to_q.diff_b" in keys and not any(k.endswith(".diff") for k in keys)
    assert meta["razor.format"] == "2"
    loaded = RazorEdit.load(path)
    assert loaded.deltas.keys() == edit.deltas.keys()
    for name, delta in edit.deltas.items():
        assert torch.equal(loaded.deltas[name], delta), name
    assert stored < 0.6 * sum(d.numel() for d in edit.deltas.values())  # a quarter of the rows of 32x16/32x32


def test_selector_factors_are_exact_and_only_used_when_smaller():
    g = torch.Generator().manual_seed(0)
    values = torch.randn(64, 48, generator=g) * torch.logspace(-20, 20, 48)  # every magnitude float32 holds
    rows = torch.zeros(64, 48)
    rows[[3, 4, 40]] = values[[3, 4, 40]]
    cols = torch.zeros(64, 48)
    cols[:, [0, 47]] = values[:, [0, 47]]
    for delta, rank in ((rows, 3), (cols, 2)):
        up, down = selector_factors(delta)
        assert up.shape[1] == down.shape[0] == rank
        assert {up.dtype, down.dtype} == {torch.float8_e4m3fn, torch.float32}  # a one-byte selector
        assert torch.equal(up.float() @ down.float(), delta)  # as ComfyUI's loaders multiply them
    assert selector_factors(values) is None             # dense: a pair would be larger
    assert selector_factors(torch.zeros(64, 48)) is None
    assert selector_factors(torch.ones(5)) is None      # a bias


def test_format_1_files_with_full_differences_still_load(dit, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file
    edit = _tiny_edit(dit)
    new = edit.save(tmp_path / "new.safetensors")
    with safe_open(str(new), "pt") as fh:
        meta = {**fh.metadata(), "razor.format": "1"}
    old = tmp_path / "old.safetensors"
    save_file({(f"{k[:-len('.weight')]}.diff" if k.endswith(".weight") else f"{k[:-len('.bias')]}.diff_b"): v
               for k, v in edit.deltas.items()}, str(old), metadata=meta)
    loaded = RazorEdit.load(old)
    assert all(torch.equal(loaded.deltas[k], v) for k, v in edit.deltas.items())


def test_existing_file_is_never_overwritten(dit, tmp_path):
    path = tmp_path / "e.safetensors"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="already exists"):
        _tiny_edit(dit).save(path)
    assert path.read_bytes() == b"keep me"
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_edit_for_other_weights_is_refused(dit):
    edit = _tiny_edit(dit)
    other = MiniDiT(width=32, depth=2, heads=4, context_dim=16, refine_channels=8)
    with pytest.raises(EditFileError, match="fingerprint mismatch"):
        edit.apply_to(other)
    smaller = MiniDiT(width=16, depth=2, heads=4, context_dim=16, refine_channels=8)
    with pytest.raises(EditFileError, match="shape mismatch"):
        edit.apply_to(smaller)


def test_corrupt_and_foreign_files_are_refused(dit, tmp_path):
    path = _tiny_edit(dit).save(tmp_path / "e.safetensors")
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(path.read_bytes()[:50])
    with pytest.raises(EditFileError, match="not a readable safetensors"):
        RazorEdit.load(truncated)
    from safetensors.torch import save_file
    foreign = tmp_path / "lora.safetensors"
    save_file({"x.diff": torch.zeros(2)}, str(foreign))
    with pytest.raises(EditFileError, match="lacks RAZOR metadata"):
        RazorEdit.load(foreign)


def test_unit_values_roundtrip():
    params = {"w": torch.arange(12.0).view(3, 4), "b": torch.arange(3.0)}
    from razor_core.units import Slice
    unit = EditUnit("u", "head", (Slice("w", 0, 1, 2), Slice("b", 0, 1, 2), Slice("w", 1, 0, 1)))
    v = unit_values(unit, params)
    assert v.tolist() == [4, 5, 6, 7, 8, 9, 10, 11, 1, 2, 0, 4, 8]
    back = scatter_unit(unit, torch.ones_like(v), params)
    assert back["w"].tolist() == [[1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
