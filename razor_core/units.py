"""Edit units: the pieces of a model that RAZOR scores and edits.

A unit is a set of parameter slices that are scored and stepped together:
- a *head* of an attention module: rows h*d_h:(h+1)*d_h of the q, k and v weights and biases, and the same columns
  of the output projection (its bias is shared by all heads, so no head owns it); for a fused qkv weight, the
  three row blocks; with grouped-query attention, one key/value head with the query heads that read it;
- a *layer*: one attention module's projections, or one MLP linear (weight and bias), or the MLP part of a block
  whose attention and MLP share fused input and output projections (Flux's single-stream blocks);
- a *key/value* unit of a cross-attention module (where the text enters the denoiser): one head's rows of the key
  and value projections (kind "kv_head"), or the whole key and value projections (kind "kv"). Their query and output
  projections act on image tokens for every prompt alike, so they are not the text's path and not candidates.
Editing a head changes only its slices, so every other head stays bit-identical.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn


@dataclass(frozen=True)
class Slice:
    """`length` entries from `start` along `dim` of parameter `param`; dim=None means the whole tensor."""
    param: str
    dim: int | None = None
    start: int = 0
    length: int = 0

    def of(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.dim is None else tensor.narrow(self.dim, self.start, self.length)


@dataclass(frozen=True)
class EditUnit:
    name: str                  # e.g. "denoiser.blocks.3.attn2.head1"
    kind: str                  # "head", "attention", "mlp", "kv_head" or "kv"
    slices: tuple[Slice, ...]

    @property
    def params(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(s.param for s in self.slices))


@dataclass(frozen=True)
class AttentionSpec:
    """Where an attention module keeps its projections (attribute names under the module)."""
    q: str
    k: str
    v: str
    out: str
    heads_attr: str
    fused_qkv: bool = False  # True: `q` names one (3d, d) weight holding Q, K and V row blocks
    label: str = "head"      # unit names end in f"{label}{h}" (another label where one module holds two streams)


COMFY_STYLE = AttentionSpec("to_q", "to_k", "to_v", "to_out", "heads")
HF_CLIP_STYLE = AttentionSpec("q_proj", "k_proj", "v_proj", "out_proj", "num_heads")


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _linear_slices(module: nn.Module, prefix: str, dim: int, start: int, length: int,
                   with_bias: bool) -> list[Slice]:
    slices = [Slice(f"{prefix}.weight", dim, start, length)]
    if with_bias and getattr(module, "bias", None) is not None:
        slices.append(Slice(f"{prefix}.bias", 0, start, length))
    return slices


def _whole(module: nn.Module, prefix: str) -> list[Slice]:
    return [Slice(f"{prefix}.{name}") for name, _ in module.named_parameters(recurse=False)]


def _out_linear(attn: nn.Module, spec: AttentionSpec) -> tuple[nn.Module, str]:
    out = getattr(attn, spec.out)
    if isinstance(out, (nn.Sequential, nn.ModuleList)):  # diffusers/ComfyUI `to_out.0`
        return out[0], f"{spec.out}.0"
    return out, spec.out


def _attention_modules(model: nn.Module, spec: AttentionSpec) -> list[tuple[str, nn.Module]]:
    found = []
    for mod_name, attn in model.named_modules():
        if not all(hasattr(attn, a) for a in (spec.q, spec.out, spec.heads_attr)):
            continue
        if not spec.fused_qkv and not all(hasattr(attn, a) for a in (spec.k, spec.v)):
            continue
        found.append((mod_name, attn))
    return found


def attention_units(model: nn.Module, spec: AttentionSpec, prefix: str = "", heads: bool = True,
                    skip: Callable[[str], bool] = lambda _name: False) -> list[EditUnit]:
    """One unit per head (heads=True) or per attention module (heads=False) for every module matching `spec`
    whose name `skip` does not reject."""
    units = []
    for mod_name, attn in _attention_modules(model, spec):
        if skip(mod_name):
            continue
        base = f"{prefix}{mod_name}".rstrip(".")
        n_heads = int(getattr(attn, spec.heads_attr))
        out_mod, out_name = _out_linear(attn, spec)
        width = out_mod.weight.shape[1]
        d_h = width // n_heads
        if not heads:
            slices = []
            for name in ([spec.q] if spec.fused_qkv else [spec.q, spec.k, spec.v]) + [out_name]:
                slices += _whole(attn.get_submodule(name), _join(base, name))
            units.append(EditUnit(base if spec.label == "head" else _join(base, f"{spec.label}s"), "attention",
                                  tuple(slices)))
            continue
        for h in range(n_heads):
            slices: list[Slice] = []
            if spec.fused_qkv:
                q = getattr(attn, spec.q)
                for offset in (0, width, 2 * width):
                    slices += _linear_slices(q, _join(base, spec.q), 0, offset + h * d_h, d_h, True)
            else:
                for name in (spec.q, spec.k, spec.v):
                    slices += _linear_slices(getattr(attn, name), _join(base, name), 0, h * d_h, d_h, True)
            slices += _linear_slices(out_mod, _join(base, out_name), 1, h * d_h, d_h, False)
            units.append(EditUnit(_join(base, f"{spec.label}{h}"), "head", tuple(slices)))
    return units


def parallel_block_units(model: nn.Module, prefix: str = "", heads: bool = True) -> list[EditUnit]:
    """Blocks that run attention and MLP side by side from one fused input projection (Flux/Chroma single-stream
    blocks: `linear1` holds the q, k and v row blocks and then the MLP's input rows, `linear2` takes the attention
    output's columns and then the MLP's). Per head (heads=True): its rows of q, k and v in `linear1` and its columns
    of `linear2`; otherwise the attention part as one unit. The MLP part is one layer unit either way."""
    units = []
    for mod_name, block in model.named_modules():
        if not all(hasattr(block, a) for a in ("linear1", "linear2", "num_heads", "hidden_size")):
            continue
        base = f"{prefix}{mod_name}".rstrip(".")
        fused_in, fused_out = block.linear1, block.linear2
        into, out_of = _join(base, "linear1"), _join(base, "linear2")
        width = int(block.hidden_size)
        d_h = width // int(block.num_heads)
        if heads:
            for h in range(int(block.num_heads)):
                slices = []
                for offset in (0, width, 2 * width):
                    slices += _linear_slices(fused_in, into, 0, offset + h * d_h, d_h, True)
                slices += _linear_slices(fused_out, out_of, 1, h * d_h, d_h, False)
                units.append(EditUnit(_join(base, f"head{h}"), "head", tuple(slices)))
        else:
            units.append(EditUnit(_join(base, "attention"), "attention", tuple(
                _linear_slices(fused_in, into, 0, 0, 3 * width, True)
                + _linear_slices(fused_out, out_of, 1, 0, width, False))))
        mlp_in, mlp_hidden = fused_in.weight.shape[0] - 3 * width, fused_out.weight.shape[1] - width
        units.append(EditUnit(_join(base, "mlp"), "mlp", tuple(
            _linear_slices(fused_in, into, 0, 3 * width, mlp_in, True)
            + _linear_slices(fused_out, out_of, 1, width, mlp_hidden, False))))
    return units


def grouped_query_units(model: nn.Module, prefix: str = "", heads: bool = True) -> list[EditUnit]:
    """Attention with one fused projection whose keys and values have fewer heads than its queries (grouped-query
    attention; NextDiT's `qkv` rows: its query heads, then its key heads, then as many value heads; `out` reads the
    query heads' columns). Per head (heads=True) a unit is one key/value head's group: its key and value rows, the
    rows of the query heads that read them, and those query heads' columns of `out`, so other groups stay
    bit-identical; otherwise the module as one unit."""
    units = []
    for mod_name, attn in model.named_modules():
        if not all(hasattr(attn, a) for a in ("qkv", "out", "n_local_heads", "n_local_kv_heads", "head_dim")):
            continue
        base = f"{prefix}{mod_name}".rstrip(".")
        fused, qkv, out = attn.qkv, _join(base, "qkv"), _join(base, "out")
        n_q, n_kv, d_h = int(attn.n_local_heads), int(attn.n_local_kv_heads), int(attn.head_dim)
        if not heads:
            units.append(EditUnit(base, "attention", tuple(_whole(fused, qkv) + _whole(attn.out, out))))
            continue
        group = n_q // n_kv
        for g in range(n_kv):
            slices = _linear_slices(fused, qkv, 0, g * group * d_h, group * d_h, True)
            slices += _linear_slices(fused, qkv, 0, (n_q + g) * d_h, d_h, True)
            slices += _linear_slices(fused, qkv, 0, (n_q + n_kv + g) * d_h, d_h, True)
            slices += _linear_slices(attn.out, out, 1, g * group * d_h, group * d_h, False)
            units.append(EditUnit(_join(base, f"head{g}"), "head", tuple(slices)))
    return units


def key_value_units(model: nn.Module, spec: AttentionSpec, prefix: str, heads: bool,
                    is_cross_attention: Callable[[str], bool]) -> list[EditUnit]:
    """Key/value units of every cross-attention module (separate k and v projections): per head, its rows of both
    (and of their biases), or both whole."""
    units = []
    for mod_name, attn in _attention_modules(model, spec):
        if spec.fused_qkv or not is_cross_attention(mod_name):
            continue
        base = f"{prefix}{mod_name}".rstrip(".")
        k, v = getattr(attn, spec.k), getattr(attn, spec.v)
        if not heads:
            units.append(EditUnit(_join(base, "kv"), "kv", tuple(
                _whole(k, _join(base, spec.k)) + _whole(v, _join(base, spec.v)))))
            continue
        n_heads = int(getattr(attn, spec.heads_attr))
        d_h = k.weight.shape[0] // n_heads
        for h in range(n_heads):
            slices = (_linear_slices(k, _join(base, spec.k), 0, h * d_h, d_h, True)
                      + _linear_slices(v, _join(base, spec.v), 0, h * d_h, d_h, True))
            units.append(EditUnit(_join(base, f"kv{h}"), "kv_head", tuple(slices)))
    return units


def linear_units(model: nn.Module, names: Iterable[str], prefix: str = "", kind: str = "mlp") -> list[EditUnit]:
    """One unit per named linear layer (weight and bias)."""
    return [EditUnit(f"{prefix}{n}", kind, tuple(_whole(model.get_submodule(n), f"{prefix}{n}"))) for n in names]


def unit_values(unit: EditUnit, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """The unit's entries of `tensors` (parameters or gradients), flattened into one vector."""
    return torch.cat([s.of(tensors[s.param]).reshape(-1) for s in unit.slices])


def scatter_unit(unit: EditUnit, vector: torch.Tensor, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `unit_values`: a dict of full-shape tensors shaped like `like`'s, in `vector`'s dtype (a float32
    step stays float32 on half-precision weights), zero outside the unit's slices."""
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for s in unit.slices:
        full = out.setdefault(s.param, torch.zeros_like(like[s.param], dtype=vector.dtype))
        view = s.of(full)
        view.copy_(vector[offset:offset + view.numel()].view_as(view))
        offset += view.numel()
    return out
