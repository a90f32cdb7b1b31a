"""What every adapter shares: the granularity/blocks choices, a tower's candidate units, and θ⁰ by name."""
from __future__ import annotations

from torch import nn

from ..objective import Params
from ..units import EditUnit, attention_units, key_value_units, linear_units

GRANULARITIES = ("heads", "layers")
DIFFUSION_BLOCKS = ("denoiser", "text_encoder", "all")


def _check_choice(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {allowed}, got {value!r}")


def _mlp_names(module: nn.Module, leaf_names: tuple[str, ...]) -> list[str]:
    return [n for n, m in module.named_modules() if isinstance(m, nn.Linear) and n.endswith(leaf_names)]


def is_cross_attention(module_name: str) -> bool:
    """The denoiser's text-reading attention: `attn2` in ComfyUI's and diffusers' transformer blocks and MiniDiT."""
    return module_name.rsplit(".", 1)[-1] == "attn2"


def tower_units(module: nn.Module, spec, prefix: str, heads: bool, mlp_leaves: tuple[str, ...],
                keys_values: bool = False) -> list[EditUnit]:
    """A tower's attention heads (or whole attention modules) and its MLP linears. With `keys_values` (denoisers),
    cross-attention modules give key/value units instead of heads: the text's path into the denoiser."""
    skip = is_cross_attention if keys_values else (lambda _name: False)
    kv = key_value_units(module, spec, prefix, heads, is_cross_attention) if keys_values else []
    return (kv + attention_units(module, spec, prefix, heads=heads, skip=skip)
            + linear_units(module, _mlp_names(module, mlp_leaves), prefix))


class UnitModel(nn.Module):
    """Shared by the adapters: validated granularity/blocks and θ⁰ lookup by parameter name."""

    allowed_blocks: tuple[str, ...] = ()

    def __init__(self, granularity: str, blocks: str):
        super().__init__()
        _check_choice(granularity, GRANULARITIES, "granularity")
        _check_choice(blocks, self.allowed_blocks, "blocks")
        self.granularity = granularity
        self.blocks = blocks

    def params_root(self) -> nn.Module:
        """The module whose parameter names the units use."""
        return self

    def base_params(self, units: list[EditUnit]) -> Params:
        """θ⁰ of `units` as the model stores it, without a copy. Half-precision weights lose nothing by it: a layer
        that computes in its weights' dtype computes their gradients in that dtype too, and the algorithm keeps
        gradients, scores and steps in float32 (θ⁰ + Δ is float32, so no step is rounded away)."""
        named = dict(self.params_root().named_parameters())
        return {p: named[p].detach() for u in units for p in u.params}
