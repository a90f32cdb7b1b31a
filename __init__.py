"""comfyui-razor: the ComfyUI entry point of the pack.

ComfyUI imports this file from custom_nodes/ and registers the nodes through `comfy_entrypoint` (V3 API). No
NODE_CLASS_MAPPINGS is defined on purpose: ComfyUI reads a pack that has one as V1 and then ignores
`comfy_entrypoint`.

The file must also import cleanly without ComfyUI (tests, tools), so the nodes are only loaded when ComfyUI's
`comfy_api` is importable.
"""
try:
    import comfy_api.latest  # noqa: F401  (present only inside ComfyUI)
except ImportError:
    __all__: list[str] = []
else:
    from .nodes import comfy_entrypoint

    __all__ = ["comfy_entrypoint"]
