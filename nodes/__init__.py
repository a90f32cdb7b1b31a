"""ComfyUI nodes of the pack (thin: parse inputs, call razor_core, format outputs), registered through ComfyUI's V3
API: `comfy_entrypoint` returns an extension that lists `NODES`.

One module per node group; a new group's module adds its classes to `NODES`.
"""
from comfy_api.latest import ComfyExtension, io

from . import edits, unlearn
from .demo_model import RazorLoadMiniCanvas

NODES: list[type[io.ComfyNode]] = [
    RazorLoadMiniCanvas,
    *unlearn.NODES,
    *edits.NODES,
]


class RazorExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> RazorExtension:
    return RazorExtension()
